"""Triton kernels and their launchers, one module per kernel family (``fastdenoise.triton.haar``, ...).

Each module defines its kernels and exposes them as real torch ops through
``torch.library.triton_op`` + ``wrap_triton``. The public functions in :mod:`fastdenoise.ops`
import these modules lazily, only when the Triton backend is picked, so importing this package
imports nothing (no triton, no kernels). Triton runs on CUDA tensors, or on CPU tensors under
``TRITON_INTERPRET=1``.
"""
