"""The backward shared by the Triton ops whose gradient is that of their plain PyTorch reference,
recomputed from the saved inputs (no triton import here)."""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["register_recompute_autograd"]


def register_recompute_autograd(name: str, reference: Callable, n_tensors: int) -> None:
    """Registers the autograd of the torch op ``name`` whose first ``n_tensors`` inputs are
    tensors (or None) and whose other inputs are plain values: the backward recomputes
    ``reference(*tensors, *values)`` with the saved tensors as leaves and returns their
    gradients (None for absent tensors, tensors that need none, and the values)."""
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:n_tensors])
        ctx.values = tuple(inputs[n_tensors:])

    def backward(ctx, grad):
        wanted = list(ctx.needs_input_grad[:n_tensors])
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(bool(need)) if t is not None else None
                      for t, need in zip(ctx.saved_tensors, wanted)]
            out = reference(*leaves, *ctx.values)
            inputs = [t for t, need in zip(leaves, wanted) if t is not None and need]
            grads = iter(torch.autograd.grad(out, inputs, grad) if inputs else ())
        result = [next(grads) if t is not None and need else None for t, need in zip(leaves, wanted)]
        return (*result, *([None] * len(ctx.values)))

    torch.library.register_autograd(name, backward, setup_context=setup_context)
