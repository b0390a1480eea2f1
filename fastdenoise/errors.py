"""Typed errors raised by fastdenoise before any kernel runs.

Every message names the argument, what was expected and what came, e.g.
``x: expected 4 dims (B, C, H, W), got 3: [3, 8, 9]``.
"""

from __future__ import annotations

__all__ = [
    "FastDenoiseError",
    "ShapeError",
    "DTypeError",
    "DeviceError",
    "BackendError",
    "CheckpointError",
    "ImageFormatError",
]


class FastDenoiseError(Exception):
    """Base class of every error fastdenoise raises on purpose."""


class ShapeError(FastDenoiseError, ValueError):
    """A tensor has the wrong rank or size."""


class DTypeError(FastDenoiseError, TypeError):
    """A tensor has a dtype the function does not take."""


class DeviceError(FastDenoiseError, RuntimeError):
    """A tensor is on a device the function (or the forced backend) cannot use."""


class BackendError(FastDenoiseError, RuntimeError):
    """A backend was asked for by name but cannot run here (not built, not installed)."""


class CheckpointError(FastDenoiseError, RuntimeError):
    """A checkpoint does not fit the architecture it is loaded into."""


class ImageFormatError(FastDenoiseError, ValueError):
    """An image file is corrupt or truncated, or stored in a way fastdenoise cannot read (or
    write) without losing information: the message says what was expected and what came."""
