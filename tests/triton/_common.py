"""What every Triton test module of this folder shares: where the kernels run and the marks."""

from __future__ import annotations

import os

import pytest
import torch

#: The kernels run on CPU under TRITON_INTERPRET=1 (CI), else on a CUDA GPU.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEVICE = "cpu" if INTERPRET or not torch.cuda.is_available() else "cuda"
#: pytestmark of a Triton test module.
MARKS = [
    pytest.mark.triton,
    pytest.mark.skipif(not INTERPRET and not torch.cuda.is_available(),
                       reason="Triton kernels need a CUDA GPU or TRITON_INTERPRET=1 (CPU interpreter)"),
]
