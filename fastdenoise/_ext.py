"""Loads the compiled extension ``fastdenoise._C`` and says what was built.

``import fastdenoise`` never fails because of it: when ``_C`` is missing, cannot be
loaded, or was built for another torch, one warning names the reason (and both torch
versions) and every op serves from its plain PyTorch reference.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Optional

import torch

__all__ = ["extension", "build_info", "has_kernel", "load_error", "cuda_skipped"]

_C: Optional[Any] = None
_INFO: dict = {}
_KERNELS: dict = {}  # "haar_dwt2d" -> frozenset of dispatch keys with a compiled kernel
_ERROR: Optional[str] = None
_WARNED = False


def _warn_once(msg: str) -> None:
    global _WARNED
    if not _WARNED:
        _WARNED = True
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _build_meta(name: str) -> Optional[Any]:
    """A value setup.py recorded next to _C (read without loading _C), or None."""
    try:
        meta = importlib.import_module("fastdenoise._build_meta")
    except ImportError:
        return None
    return getattr(meta, name, None)


def _built_for() -> Optional[str]:
    """The torch version setup.py recorded next to _C, if any."""
    return _build_meta("TORCH_VERSION")


def cuda_skipped() -> Optional[str]:
    """Why setup.py built no CUDA kernels (e.g. "torch is a CPU-only build", or a toolkit whose
    major version is not torch's), or None when it built them or did not say."""
    return _build_meta("CUDA_SKIPPED")


def _load() -> None:
    global _C, _INFO, _ERROR
    running = torch.__version__
    built = _built_for()
    if built is not None and built != running:
        _ERROR = (f"fastdenoise._C was built for torch {built} but torch {running} is running; "
                  "not loading it. The plain PyTorch reference ops serve instead. Rebuild with "
                  "`pip install --no-build-isolation -e .`.")
        _warn_once(_ERROR)
        return
    try:
        mod = importlib.import_module("fastdenoise._C")
    except ImportError as exc:  # missing, or an ABI mismatch that dlopen caught
        _ERROR = (f"fastdenoise._C could not be loaded ({exc}); built for torch "
                  f"{built or 'unknown'}, running torch {running}. The plain PyTorch reference "
                  "ops serve instead. Build it with `pip install --no-build-isolation -e .`.")
        _warn_once(_ERROR)
        return
    info = dict(mod.build_info())
    if info.get("torch_version") != running:
        _ERROR = (f"fastdenoise._C was built for torch {info.get('torch_version')} but torch "
                  f"{running} is running; not using it. The plain PyTorch reference ops serve "
                  "instead. Rebuild with `pip install --no-build-isolation -e .`.")
        _warn_once(_ERROR)
        return
    _C, _INFO = mod, info
    _KERNELS.update({name.split("::", 1)[1]: frozenset(keys) for name, keys in _registered_ops().items()})


def extension() -> Optional[Any]:
    """The loaded ``fastdenoise._C`` module, or None."""
    return _C


def load_error() -> Optional[str]:
    """Why ``_C`` is not in use, or None when it is."""
    return _ERROR


def build_info() -> dict:
    """What was compiled: ``{"loaded": bool, "torch_version", "cuda", "cuda_archs", "ops", ...}``."""
    if _C is None:
        return {"loaded": False, "error": _ERROR, "cuda": False, "cuda_archs": [], "ops": {}}
    info = dict(_INFO)
    info["loaded"] = True
    info["ops"] = _registered_ops()
    if not info.get("cuda"):
        info["cuda_skipped"] = cuda_skipped()
    return info


def _registered_ops() -> dict:
    """``{op_name: [dispatch keys with a kernel]}`` for every fastdenoise op the dispatcher knows."""
    ops: dict = {}
    for schema in torch._C._jit_get_all_schemas():
        if not schema.name.startswith("fastdenoise::"):
            continue
        keys = [k for k in ("CPU", "CUDA")
                if torch._C._dispatch_has_kernel_for_dispatch_key(schema.name, k)]
        ops[schema.name] = keys
    return dict(sorted(ops.items()))


def has_kernel(op: str, key: str) -> bool:
    """True when ``fastdenoise::<op>`` has a compiled kernel for dispatch key ``key`` ("CPU"/"CUDA")."""
    # A plain dict lookup (filled at load time), so torch.compile traces through it.
    return key in _KERNELS.get(op, ())


_load()
