"""Input checks shared by every public function. Metadata only: no values are read."""

from __future__ import annotations

from typing import Iterable

import torch

from .errors import DeviceError, DTypeError, ShapeError

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _dims(t: torch.Tensor) -> str:
    return str(list(t.shape))


def check_tensor(name: str, x, *, dims: int = 4, dtypes: Iterable[torch.dtype] = FLOAT_DTYPES,
                 layout: str = "(B, C, H, W)", allow_empty: bool = False) -> None:
    """Check that ``x`` is a tensor of rank ``dims`` with one of ``dtypes``.

    Raises TypeError (not a tensor), ShapeError (rank, empty) or DTypeError.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dim() != dims:
        raise ShapeError(f"{name}: expected {dims} dims {layout}, got {x.dim()}: {_dims(x)}")
    dtypes = tuple(dtypes)
    if x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise DTypeError(f"{name}: expected dtype in ({names}), got {str(x.dtype).replace('torch.', '')}")
    if not allow_empty and x.numel() == 0:
        raise ShapeError(f"{name}: expected a non-empty tensor {layout}, got shape {_dims(x)}")


def check_even_hw(name: str, x: torch.Tensor) -> None:
    h, w = x.shape[-2], x.shape[-1]
    if h % 2 or w % 2:
        raise ShapeError(
            f"{name}: expected even H and W (the Haar transform works on 2x2 blocks), "
            f"got H={h}, W={w}: {_dims(x)}")


def check_channels_divisible(name: str, x: torch.Tensor, k: int, why: str) -> None:
    c = x.shape[1]
    if c % k:
        raise ShapeError(f"{name}: expected a channel count divisible by {k} ({why}), got C={c}: {_dims(x)}")


def check_same_device(name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if x.device != ref.device:
        raise DeviceError(f"{name}: expected a tensor on {ref.device} (the device of {ref_name}), got {x.device}")


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """The memory format an output of ``x`` should keep (channels_last or contiguous)."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def pixel_stride(x: torch.Tensor) -> int:
    """The stride between consecutive pixels of a dense NCHW or channels_last (B, C, H, W) tensor,
    pixels flattened as i * W + j. PyTorch ignores the strides of size-1 dims when it decides
    contiguity, so for W = 1 ``stride(3)`` can be anything and the pixel step is ``stride(2)``."""
    return x.stride(2) if x.shape[3] == 1 else x.stride(3)


def check_channels(name: str, x: torch.Tensor, expected: int, why: str = "") -> None:
    """Check that ``x`` (B, C, H, W) has ``expected`` channels; ``why`` says where the number comes from."""
    c = x.shape[1]
    if c != expected:
        extra = f" ({why})" if why else ""
        raise ShapeError(f"{name}: expected {expected} channels{extra}, got C={c}: {_dims(x)}")


def check_hw_multiple(name: str, x: torch.Tensor, k: int, why: str = "") -> None:
    """Check that H and W of ``x`` are multiples of ``k``."""
    h, w = x.shape[-2], x.shape[-1]
    if h % k or w % k:
        extra = f" ({why})" if why else ""
        raise ShapeError(f"{name}: expected H and W multiples of {k}{extra}, got H={h}, W={w}: {_dims(x)}")


def check_like(name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """Check that ``x`` is on ``ref``'s device (DeviceError) and has its dtype (DTypeError)."""
    check_same_device(name, x, ref_name, ref)
    if x.dtype != ref.dtype:
        raise DTypeError(f"{name}: expected dtype {str(ref.dtype).replace('torch.', '')} (the dtype of "
                         f"{ref_name}), got {str(x.dtype).replace('torch.', '')}")


def check_model_input(model: torch.nn.Module, x, channels: int, why: str) -> None:
    """Edge checks of a model's input: a float (B, C, H, W) tensor with ``channels`` channels,
    on the device and in the dtype of the model's parameters (any float dtype under autocast)."""
    check_tensor("x", x)
    check_channels("x", x, channels, why)
    ref = next(model.parameters(), None)
    if ref is None:
        return
    check_same_device("x", x, "the model's parameters", ref)
    if not autocast_enabled(x.device.type):
        check_like("x", x, "the model's parameters", ref)


def check_block_input(block: str, x, channels: int, param: torch.Tensor, *, match_dtype: bool = True) -> None:
    """Edge checks of a fused block's input: a float (B, C, H, W) tensor ``x`` with the block's
    ``channels``, on the device of the block's parameter ``param`` and, when ``match_dtype`` and
    autocast is off, in its dtype (the official block's convolutions raise there, and a fused op
    would round the weights silently). ``block`` names the block in the messages."""
    check_tensor("x", x)
    check_channels("x", x, channels, f"the channel count of {block}")
    check_same_device("x", x, f"{block}'s parameters", param)
    if match_dtype and not autocast_enabled(x.device.type):
        check_like("x", x, f"{block}'s parameters", param)


def autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:        # a device type autocast does not know (meta, ...)
        return False
