"""The one dispatch rule.

``backend=None`` picks CUDA (then Triton) for CUDA tensors, the C++ CPU kernel for CPU
tensors where one exists, else the plain PyTorch reference. A named backend
(``"reference" | "triton" | "cuda" | "cpu"``) is forced and raises if it cannot run.
``FASTDENOISE_BACKEND`` sets the default, with the same meaning as passing it.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from types import ModuleType
from typing import Callable, Optional

import torch

from . import _ext
from .errors import BackendError, DeviceError

BACKENDS = ("reference", "triton", "cuda", "cpu")

_TRITON_OK: bool = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    """Triton is importable (and so can run on CUDA tensors, or on CPU under TRITON_INTERPRET=1)."""
    return _TRITON_OK


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_runs_on(x: torch.Tensor) -> bool:
    return x.device.type == "cuda" or (x.device.type == "cpu" and triton_interpret())


_WARNED: set = set()


def _warn_reference_once(op: str, device: torch.device) -> None:
    if op not in _WARNED:
        _WARNED.add(op)
        why = _ext.load_error()
        if why is None:
            skipped = _ext.cuda_skipped()
            why = "the extension was built without CUDA" + (f": {skipped}" if skipped else "")
        warnings.warn(f"fastdenoise::{op}: no compiled kernel and no Triton for {device.type} tensors "
                      f"here ({why}); the plain PyTorch reference serves.", RuntimeWarning, stacklevel=3)


def default_backend() -> Optional[str]:
    """The backend ``FASTDENOISE_BACKEND`` forces, or None."""
    return os.environ.get("FASTDENOISE_BACKEND") or None


def resolve(op: str, x: torch.Tensor, backend: Optional[str], *, triton_op: bool = True,
            dtypes_triton=None) -> str:
    """The backend that will run ``op`` on ``x``; raises BackendError / DeviceError if a forced one cannot.

    ``op`` is the name of the compiled op (``fastdenoise::<op>``); ``triton_op`` says whether a
    Triton kernel exists for this op family.
    """
    if backend is None:
        backend = default_backend()
    if backend is None:
        if x.device.type == "cuda":
            if _ext.has_kernel(op, "CUDA"):
                return "cuda"
            if triton_op and triton_available():
                return "triton"
            _warn_reference_once(op, x.device)
            return "reference"
        if x.device.type == "cpu" and _ext.has_kernel(op, "CPU"):
            return "cpu"
        return "reference"
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS} or None, got {backend!r}")
    if backend == "reference":
        return backend
    if backend == "cpu":
        if x.device.type != "cpu":
            raise DeviceError(f"backend='cpu': expected a tensor on cpu, got {x.device}")
        if not _ext.has_kernel(op, "CPU"):
            if _ext.extension() is not None:       # built and loaded: the op family has no C++ kernel
                raise BackendError(f"backend='cpu': fastdenoise::{op} has no C++ CPU kernel (CPU tensors run "
                                   f"its plain PyTorch reference: backend=None or 'reference')")
            raise BackendError(f"backend='cpu': fastdenoise::{op} has no compiled CPU kernel here "
                               f"({_ext.load_error() or 'not built'})")
        return backend
    if backend == "cuda":
        if x.device.type != "cuda":
            raise DeviceError(f"backend='cuda': expected a tensor on cuda, got {x.device}")
        if not _ext.has_kernel(op, "CUDA"):
            raise BackendError(f"backend='cuda': fastdenoise::{op} has no compiled CUDA kernel here "
                               f"({_ext.load_error() or 'the extension was built without CUDA'})")
        return backend
    # triton
    if not triton_op:
        raise BackendError(f"backend='triton': fastdenoise::{op} has no Triton kernel")
    if not triton_available():
        raise BackendError("backend='triton': triton is not installed")
    if not _triton_runs_on(x):
        raise DeviceError(f"backend='triton': expected a tensor on cuda (or on cpu with "
                          f"TRITON_INTERPRET=1), got {x.device}")
    return backend


def lazy_module(name: str, setup: Optional[Callable[[ModuleType], None]] = None) -> Callable[[], ModuleType]:
    """``get()``: the module ``name``, imported on the first call, when ``setup(module)`` runs
    too (e.g. registering the autograd of its ops). For the optional Triton backends: importing
    them needs triton, so it waits until a Triton kernel is asked for.

    Under ``torch.compile`` the import runs at trace time instead of being traced (the loader is
    marked constant: what ``torch.compiler.assume_constant_result`` does, without importing
    ``torch._dynamo`` here), so the first call may come from a compiled function. ``get.reset()``
    forgets the module (tests: the next call imports and sets it up again).
    """
    cache: list = []

    def load() -> bool:
        if not cache:
            module = importlib.import_module(name)
            if setup is not None:
                setup(module)
            cache.append(module)
        return True

    load._dynamo_marked_constant = True

    def get() -> ModuleType:
        load()
        return cache[0]

    get.reset = cache.clear
    return get
