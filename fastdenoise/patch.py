"""``fastdenoise.patch(model)``: swap the official blocks of a model for their fused twins.

The walk goes over any ``nn.Module`` tree and recognises the official blocks by structure, not by
import path (forks copy the classes into their own modules): the class name first, then the
attributes, submodule types and parameter shapes each twin's ``from_module`` checks. Recognised:

=====================  ==================================  ==================================
class name             official block                      fused twin (``fastdenoise.nn``)
=====================  ==================================  ==================================
``NAFBlock``           NAFNet's block                      :class:`~fastdenoise.nn.NAFBlock`
``BaselineBlock``      NAFNet's Baseline block             :class:`~fastdenoise.nn.BaselineBlock`
``LayerNorm2d``        NAFNet's LayerNorm2d                :class:`~fastdenoise.nn.LayerNorm2d`
``SimpleGate``         NAFNet's SimpleGate                 :class:`~fastdenoise.nn.SimpleGate`
``CAB``                MPRNet's channel attention block    :class:`~fastdenoise.nn.CAB`
``CALayer``            MPRNet's (``conv_du``) or RIDNet's  :class:`~fastdenoise.nn.MPRNetCALayer`,
                       (``c1`` / ``c2``) channel attention :class:`~fastdenoise.nn.RIDNetCALayer`
``TransformerBlock``   Restormer's block                   :class:`~fastdenoise.nn.TransformerBlock`
``Attention``          Restormer's MDTA                    :class:`~fastdenoise.nn.MDTA`
``FeedForward``        Restormer's GDFN                    :class:`~fastdenoise.nn.GDFN`
``LayerNorm``          Restormer's LayerNorm (``body``)    :class:`~fastdenoise.nn.RestormerLayerNorm`
=====================  ==================================  ==================================

A block is replaced as a whole when it can be (a NAFBlock takes its LayerNorm2d and SimpleGate
with it); when it cannot, the walk goes on inside it and replaces what it can there.

Verification (``verify=True``, the default): a structure can match while the ``forward`` of a
fork does something else. Before a swap, the candidate and its twin run on the same small random
input (seeded, on the block's device and in its dtype, eval mode, no autograd; the global RNG is
not touched) and must agree to the dtype's rounding; when they do not, the block is left alone
and the report says so. ``verify=False`` trusts the structure.

Hooks: a block with forward or backward hooks on it or on any module inside it is left alone
(the report names the module): its twin computes the block without calling every submodule,
so the hooks would stop firing. The walk goes on inside it, where what has no hooks is swapped.

The twins share the original parameters (no copies: the model's ``state_dict()`` keys and values
are unchanged, and an optimiser keeps working). Each twin remembers the module it replaced, so
:func:`unpatch` puts the originals back. Patching twice changes nothing the second time.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from . import nn as fnn

__all__ = ["patch", "unpatch", "PatchReport", "Replacement", "LeftAlone", "FUSED_TYPES"]

#: the fused twins (a module of one of these types is never patched again)
FUSED_TYPES: Tuple[type, ...] = (fnn.NAFBlock, fnn.BaselineBlock, fnn.LayerNorm2d, fnn.SimpleGate,
                                 fnn.CAB, fnn.MPRNetCALayer, fnn.RIDNetCALayer, fnn.TransformerBlock,
                                 fnn.MDTA, fnn.GDFN, fnn.RestormerLayerNorm)

_ORIGINAL = "_fastdenoise_original"   # a twin's plain attribute holding the module it replaced


@dataclass(frozen=True)
class Replacement:
    """One swap: the module at ``path`` (``""`` for the root) of class ``before`` (its qualified
    name) is now a ``after``."""
    path: str
    before: str
    after: str


@dataclass(frozen=True)
class LeftAlone:
    """A module that looked like an official block (its class name matched) but was not swapped,
    and why."""
    path: str
    kind: str
    reason: str


@dataclass
class PatchReport:
    """What :func:`patch` did. ``model``: the patched model (the one passed in when
    ``inplace=True``, unless the root itself was swapped); ``replaced``: the swaps;
    ``left_alone``: look-alikes not swapped, with the reason; ``already_fused``: paths of
    twins found in place (a second patch reports every earlier swap there)."""
    model: nn.Module
    replaced: List[Replacement] = field(default_factory=list)
    left_alone: List[LeftAlone] = field(default_factory=list)
    already_fused: List[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        """The number of modules swapped by this call."""
        return len(self.replaced)

    def counts(self) -> Dict[str, int]:
        """Swaps per fused class, e.g. ``{"NAFBlock": 36, "LayerNorm2d": 0, ...}`` (non-zero only)."""
        out: Dict[str, int] = {}
        for r in self.replaced:
            kind = r.after.rsplit(".", 1)[-1]
            out[kind] = out.get(kind, 0) + 1
        return out

    def __str__(self) -> str:
        lines = [f"fastdenoise.patch: {self.count} module(s) replaced, {len(self.left_alone)} left alone, "
                 f"{len(self.already_fused)} already fused"]
        for kind, n in sorted(self.counts().items()):
            lines.append(f"  {n:5d} x {kind}")
        for r in self.replaced:
            lines.append(f"  replaced   {r.path or '<root>'}: {r.before} -> {r.after}")
        for a in self.left_alone:
            lines.append(f"  left alone {a.path or '<root>'} ({a.kind}): {a.reason}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Recognition
# --------------------------------------------------------------------------------------------

def _calayer_twin(m: nn.Module) -> nn.Module:
    if hasattr(m, "conv_du"):
        return fnn.MPRNetCALayer.from_module(m)
    if hasattr(m, "c1") and hasattr(m, "c2"):
        return fnn.RIDNetCALayer.from_module(m)
    raise ValueError(f"{type(m).__name__}: expected MPRNet's CALayer (`avg_pool`, `conv_du`) or RIDNet's "
                     f"(`avg_pool`, `c1`, `c2`), got attributes {sorted(n for n, _ in m.named_children())}")


#: class name -> builder of the fused twin (raises ValueError when the structure differs)
_RULES: Dict[str, Callable[[nn.Module], nn.Module]] = {
    "NAFBlock": fnn.NAFBlock.from_module,
    "BaselineBlock": fnn.BaselineBlock.from_module,
    "LayerNorm2d": fnn.LayerNorm2d.from_module,
    "SimpleGate": fnn.SimpleGate.from_module,
    "CAB": fnn.CAB.from_module,
    "CALayer": _calayer_twin,
    "TransformerBlock": fnn.TransformerBlock.from_module,
    "Attention": fnn.MDTA.from_module,
    "FeedForward": fnn.GDFN.from_module,
    "LayerNorm": fnn.RestormerLayerNorm.from_module,
}


def _probe_channels(twin: nn.Module) -> int:
    """The channel count a twin takes (for the verification input)."""
    if isinstance(twin, (fnn.NAFBlock, fnn.BaselineBlock)):
        return twin.conv1.in_channels
    if isinstance(twin, fnn.LayerNorm2d):
        return twin.weight.numel()
    if isinstance(twin, fnn.CAB):
        return twin.body[0].in_channels
    if isinstance(twin, fnn.MPRNetCALayer):
        return twin.conv_du[0].in_channels
    if isinstance(twin, fnn.RIDNetCALayer):
        return twin.c1.body[0].in_channels
    if isinstance(twin, fnn.TransformerBlock):
        return twin.attn.project_out.in_channels
    if isinstance(twin, fnn.MDTA):
        return twin.project_out.in_channels
    if isinstance(twin, fnn.GDFN):
        return twin.project_in.in_channels
    if isinstance(twin, fnn.RestormerLayerNorm):
        return twin.body.weight.numel()
    return 8                                         # SimpleGate: any even count


def _where(m: nn.Module) -> Tuple[torch.device, torch.dtype]:
    for t in list(m.parameters()) + list(m.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def _tolerance(dtype: torch.dtype) -> float:
    return {torch.float16: 2e-2, torch.bfloat16: 5e-2, torch.float64: 1e-10}.get(dtype, 1e-4)


def _verify(original: nn.Module, twin: nn.Module) -> Optional[str]:
    """None when ``twin`` computes what ``original`` computes on a random probe, else the reason."""
    device, dtype = _where(original)
    gen = torch.Generator().manual_seed(20261121)
    x = (torch.randn(2, _probe_channels(twin), 11, 9, generator=gen)
         + torch.rand(1, _probe_channels(twin), 1, 1, generator=gen)).to(device=device, dtype=dtype)
    modes = [(m, m.training) for m in list(original.modules()) + list(twin.modules())]
    try:
        for m, _ in modes:
            m.training = False
        with torch.no_grad():
            want, got = original(x.clone()), twin(x.clone())
    except Exception as e:  # noqa: BLE001 -- any failure means "do not swap"; the reason is reported
        return f"the verification run failed: {type(e).__name__}: {e}"
    finally:
        for m, mode in modes:
            m.training = mode
    if not isinstance(want, torch.Tensor) or want.shape != got.shape:
        return (f"its output on a verification input is not a tensor of the twin's output shape "
                f"{list(got.shape)}: got {getattr(want, 'shape', type(want).__name__)}")
    scale = want.detach().double().abs().max().clamp_min(1.0)
    err = (got.double() - want.double()).abs().max() / scale
    if not bool(err <= _tolerance(dtype)):
        return (f"its forward differs from the official block's: max relative difference {float(err):.3g} "
                f"on a verification input (tolerance {_tolerance(dtype):.1g} in {str(dtype).replace('torch.', '')})")
    return None


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _hooked(m: nn.Module) -> Optional[str]:
    """Which module of ``m``'s tree ("it", or "its submodule NAME") has forward or backward hooks
    registered, or None. A fused twin computes its block without calling every submodule, and
    the user's hooks would silently stop firing."""
    for name, sub in m.named_modules():
        if any(getattr(sub, d, None) for d in _HOOK_DICTS):
            return "it" if not name else f"its submodule {name}"
    return None


def _qualname(m: nn.Module) -> str:
    t = type(m)
    return f"{t.__module__}.{t.__qualname__}"


class _Walk:
    def __init__(self, verify: bool):
        self.verify = verify
        self.done: Dict[int, nn.Module] = {}     # id(original) -> twin (modules reached twice)
        self.seen: set = set()
        self.report: Optional[PatchReport] = None

    def twin_for(self, m: nn.Module, path: str) -> Optional[nn.Module]:
        """The twin replacing ``m``, or None (recording why when ``m`` looked like a block)."""
        if id(m) in self.done:
            return self.done[id(m)]
        rule = _RULES.get(type(m).__name__)
        if rule is None:
            return None
        hooked = _hooked(m)
        if hooked is not None:
            self.report.left_alone.append(LeftAlone(path, _qualname(m), f"{hooked} has hooks registered, which the "
                                                    "fused twin would not call (nor run during a verification)"))
            return None
        try:
            twin = rule(m)
        except ValueError as e:
            self.report.left_alone.append(LeftAlone(path, _qualname(m), f"its structure differs: {e}"))
            return None
        reason = _verify(m, twin) if self.verify else None
        if reason is not None:
            self.report.left_alone.append(LeftAlone(path, _qualname(m), reason))
            return None
        twin.__dict__[_ORIGINAL] = m
        self.done[id(m)] = twin
        self.report.replaced.append(Replacement(path, _qualname(m), f"fastdenoise.nn.{type(twin).__name__}"))
        return twin

    def visit(self, parent: nn.Module, prefix: str) -> None:
        if id(parent) in self.seen:
            return
        self.seen.add(id(parent))
        for name, child in list(parent.named_children()):
            if child is None:
                continue
            path = f"{prefix}.{name}" if prefix else name
            if isinstance(child, FUSED_TYPES):          # a twin from before this call
                self.report.already_fused.append(path)
                continue
            twin = self.twin_for(child, path)
            if twin is not None:
                setattr(parent, name, twin)
            else:
                self.visit(child, path)


def patch(model: nn.Module, inplace: bool = True, *, verify: bool = True) -> PatchReport:
    """Swap every recognised official block of ``model`` for its fused twin (see the module
    docstring) and return a :class:`PatchReport`.

    ``inplace=True`` changes ``model`` itself (the twins share its parameters); ``inplace=False``
    patches a deep copy and leaves ``model`` untouched -- the copy is ``report.model``. When
    ``model`` itself is a recognised block it cannot be replaced in its own place: the twin is
    ``report.model`` (path ``""`` in the report). ``verify``: check each swap numerically first.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    for name, flag in (("inplace", inplace), ("verify", verify)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name}: expected a bool, got {type(flag).__name__} {flag!r}")
    root = model if inplace else copy.deepcopy(model)
    walk = _Walk(bool(verify))
    walk.report = PatchReport(model=root)
    if isinstance(root, FUSED_TYPES):
        walk.report.already_fused.append("")
        return walk.report
    twin = walk.twin_for(root, "")
    if twin is not None:
        walk.report.model = twin
        return walk.report
    walk.visit(root, "")
    return walk.report


def unpatch(model: nn.Module) -> nn.Module:
    """Put back every module :func:`patch` replaced in ``model`` (in place) and return the model
    (the original block when ``model`` is itself a twin made by :func:`patch`). Twins built
    directly (``fastdenoise.nn`` modules, models built with ``fused=True``) stay."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if _ORIGINAL in model.__dict__:
        return model.__dict__[_ORIGINAL]
    seen = set()

    def visit(parent: nn.Module) -> None:
        if id(parent) in seen:
            return
        seen.add(id(parent))
        for name, child in list(parent.named_children()):
            if child is None:
                continue
            original = child.__dict__.get(_ORIGINAL)
            if original is not None:
                setattr(parent, name, original)
            else:
                visit(child)

    visit(model)
    return model
