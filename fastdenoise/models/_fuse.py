"""Building a model's fused variant from its plain one."""

from __future__ import annotations

from typing import Callable

from torch import nn


def swap_children(root: nn.Module, kind: type, make: Callable[[nn.Module], nn.Module]) -> None:
    """Replace every submodule of ``root`` whose class is exactly ``kind`` by ``make(it)``.

    The models' ``fused=True`` build the plain network first and then swap in the fused twins
    (which share the plain blocks' parameters), so both variants draw the same initial weights
    for the same seed and have the same state-dict keys in the same order.
    """
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is kind:
                setattr(parent, name, make(child))
