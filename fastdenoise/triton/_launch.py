"""What every Triton launcher needs around its launch, whatever the kernel.

* Triton launches on the *current* CUDA device and its current stream: a tensor on ``cuda:1``
  while ``cuda:0`` is current would be read by a kernel running on the wrong GPU (an invalid
  pointer, or silently slow peer reads). :func:`on_device` makes the tensor's GPU current for
  the launch, as PyTorch's own kernels do with a device guard.
* The y and z dimensions of a CUDA grid are limited to 65535 programs. Kernels that put the
  image index there are launched over :func:`batch_chunks` of the batch, each launch on views of
  its images (the views keep the tensors' strides, so nothing is copied).

Only torch is imported here (no triton), like the package itself.
"""

from __future__ import annotations

import contextlib
from typing import List, Tuple

import torch

MAX_GRID_YZ = 65535


def on_device(x: torch.Tensor):
    """A context that makes ``x``'s GPU the current CUDA device (nothing for CPU tensors, which
    only the interpreter runs)."""
    if x.device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.device(x.device)


def batch_chunks(n, per_image: int = 1) -> List[Tuple[int, int]]:
    """``[(b0, b1), ...]`` covering images ``0 .. n-1``, each chunk with at most ``MAX_GRID_YZ``
    programs along a grid dimension that has ``per_image`` of them per image."""
    torch._check(per_image <= MAX_GRID_YZ,
                 lambda: f"the kernel needs {per_image} programs per image along a grid dimension "
                         f"of at most {MAX_GRID_YZ}")
    step = max(1, MAX_GRID_YZ // per_image)
    if n <= step:                     # the usual case: one launch (and a plain bound for compile)
        return [(0, n)]
    return [(b0, min(n, b0 + step)) for b0 in range(0, n, step)]


def images(t: torch.Tensor, b0, b1, n) -> torch.Tensor:
    """Rows ``b0 .. b1`` of ``t`` (n rows): ``t`` itself when that is all of it -- the usual single
    launch then passes the very tensors it did before chunking existed, and a traced graph
    (torch.compile) sees no view of a tensor the kernel writes."""
    return t if b0 == 0 and b1 == n else t[b0:b1]
