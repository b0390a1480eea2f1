"""Load official checkpoints into the reference architectures.

``load_official(path_or_state_dict, arch=None, **kwargs)``: read the checkpoint, unwrap its
container, infer the architecture and its hyper-parameters from the keys and shapes, build the
model, load it with ``strict=True`` and return it in eval mode. ``build(arch, **kwargs)``
makes an untrained model by name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..errors import CheckpointError
from .dncnn import DnCNN
from .ffdnet import FFDNet
from .invdn import InvNet
from .mwcnn import MWCNN
from .mprnet import MPRNet, infer_mprnet
from .ridnet import RIDNet, infer_ridnet
from .nafnet import Baseline, BaselineLocal, NAFNet, NAFNetLocal
from .restormer import Restormer, infer_restormer

__all__ = ["ARCHS", "build", "load_official", "infer_arch", "unwrap_state_dict", "CONTAINER_KEYS"]

#: architecture name -> class
ARCHS: Dict[str, type] = {"dncnn": DnCNN, "ffdnet": FFDNet, "invdn": InvNet, "mwcnn": MWCNN}
ARCHS.update(ridnet=RIDNet, mprnet=MPRNet)
ARCHS.update({"nafnet": NAFNet, "nafnet_local": NAFNetLocal, "baseline": Baseline, "baseline_local": BaselineLocal})
ARCHS.update(restormer=Restormer)

#: keys under which training scripts store the weights, tried in this order (BasicSR writes
#: "params" / "params_ema", Lightning "state_dict", others "model", "net", "network").
CONTAINER_KEYS = ("params", "params_ema", "state_dict", "model", "net", "network")


def _arch_name(arch: str) -> str:
    name = str(arch).lower()
    if name not in ARCHS:
        raise ValueError(f"arch: expected one of {tuple(ARCHS)}, got {arch!r}")
    return name


def build(arch: str, **kwargs) -> nn.Module:
    """An untrained model of architecture ``arch`` (see :data:`ARCHS`), built with ``kwargs``."""
    return ARCHS[_arch_name(arch)](**kwargs)


# --------------------------------------------------------------------------------------------
# Reading and unwrapping
# --------------------------------------------------------------------------------------------

def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def unwrap_state_dict(obj, param_key: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: a dict of tensors, possibly under one of
    :data:`CONTAINER_KEYS` (or ``param_key``, tried first), nested; a leading ``module.``
    (DataParallel) is stripped from every key."""
    for _ in range(8):
        if _is_state_dict(obj):
            break
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"checkpoint: expected a dict of tensors (a state dict) or a dict "
                                  f"holding one, got {type(obj).__name__}")
        keys = ((param_key,) if param_key else ()) + CONTAINER_KEYS
        inner = next((obj[k] for k in keys if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            shown = list(obj)[:12]
            raise CheckpointError(f"checkpoint: expected a state dict (a dict of tensors) or one under "
                                  f"{list(keys)}, got a dict with keys {shown}"
                                  f"{' ...' if len(obj) > 12 else ''}")
        obj = inner
    else:
        raise CheckpointError("checkpoint: containers nested too deeply to find the state dict")
    out = {}
    for k, v in obj.items():
        while k.startswith("module."):
            k = k[len("module."):]
        out[k] = v
    return out


def _load_failure(exc: BaseException) -> str:
    """Why torch.load(weights_only=True) refused a file, in one line. Its message for a file
    holding other objects advises weights_only=False, which would run code from the file:
    fastdenoise never does that, so only the unpickler's own reason is kept."""
    text = str(exc)
    m = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    if m:
        detail = m.group(1).strip()
    elif isinstance(exc, EOFError):
        detail = "the file is empty or cut short"
    else:
        lines = text.strip().splitlines()
        detail = f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__
    return detail if len(detail) <= 160 else detail[:157] + "..."


def _read(path_or_state_dict):
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        path = os.fspath(path_or_state_dict)
        with open(path, "rb"):          # a missing or unreadable file: the OSError naming it
            pass
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, MemoryError):
            raise
        except Exception as exc:        # torch.load's many ways of saying "not a checkpoint"
            raise CheckpointError(f"{path}: not a checkpoint torch.load(weights_only=True) can read "
                                  f"({_load_failure(exc)})") from exc
    if isinstance(path_or_state_dict, Mapping):
        return path_or_state_dict
    raise TypeError(f"path_or_state_dict: expected a path or a dict (a state dict or a checkpoint "
                    f"holding one), got {type(path_or_state_dict).__name__}")


# --------------------------------------------------------------------------------------------
# Inference of the architecture and its hyper-parameters
# --------------------------------------------------------------------------------------------

_MODEL_KEY = re.compile(r"^model\.(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")
_OP_KEY = re.compile(r"^operations\.(\d+)\.(.+)$")


def _infer_plain(sd) -> Tuple[str, Dict[str, Any]]:
    """DnCNN / FFDNet: a flat ``model.<i>`` stack of convolutions (4-D weights) and norms."""
    convs, norms, bn = [], [], False
    for k, v in sd.items():
        m = _MODEL_KEY.match(k)
        if not m:
            continue
        if m.group(2) == "weight":
            (convs if v.dim() == 4 else norms).append(int(m.group(1)))
        bn = bn or m.group(2) == "running_mean"
    if not convs:
        raise CheckpointError("checkpoint: no `model.<i>.weight` convolution found (DnCNN / FFDNet layout)")
    convs.sort()
    first, last = sd[f"model.{convs[0]}.weight"], sd[f"model.{convs[-1]}.weight"]
    fin, lout = first.shape[1], last.shape[0]
    hp: Dict[str, Any] = {"nc": first.shape[0], "nb": len(convs),
                          "act_mode": "BR" if bn else ("IR" if norms else "R")}
    if fin == lout + 1 and lout % 4 == 0:      # FFDNet: 4 * in_nc + 1 in, 4 * out_nc out
        return "ffdnet", dict(hp, in_nc=(fin - 1) // 4, out_nc=lout // 4)
    return "dncnn", dict(hp, in_nc=fin, out_nc=lout)


def _infer_invdn(sd) -> Dict[str, Any]:
    ops: Dict[int, set] = {}
    for k in sd:
        m = _OP_KEY.match(k)
        if m:
            ops.setdefault(int(m.group(1)), set()).add(m.group(2))
    haar = sorted(i for i, names in ops.items() if "haar_weights" in names)
    if not haar:
        raise CheckpointError("checkpoint: no `operations.<i>.haar_weights` found (InvNet layout)")
    hp: Dict[str, Any] = {"channel_in": sd[f"operations.{haar[0]}.haar_weights"].shape[0] // 4,
                          "down_num": len(haar)}
    bounds = haar + [max(ops) + 1]
    hp["block_num"] = [sum(1 for i in ops if bounds[lv] < i < bounds[lv + 1]) for lv in range(len(haar))]
    blocks = sorted(i for i in ops if i not in haar)
    if blocks:
        b = blocks[0]
        if f"operations.{b}.F.conv5.weight" in sd:
            hp["subnet_constructor"] = "DBNet"
            hp["channel_out"] = sd[f"operations.{b}.F.conv5.weight"].shape[0]
        elif f"operations.{b}.F.conv3.weight" in sd:
            hp["subnet_constructor"] = "Resnet"
            hp["channel_out"] = sd[f"operations.{b}.F.conv3.weight"].shape[0]
    return hp


def _infer_mwcnn(sd) -> Dict[str, Any]:
    head, d_l2 = sd.get("head.0.body.0.weight"), sd.get("d_l2.0.body.0.weight")
    if head is None or d_l2 is None:
        raise CheckpointError("checkpoint: no `head.0.body.0.weight` / `d_l2.0.body.0.weight` found (MWCNN layout)")
    return {"n_colors": head.shape[1] // 4, "n_feats": d_l2.shape[0] // 4}


_UNET_BLOCK_KEY = re.compile(r"^(encoders\.\d+|middle_blks|decoders\.\d+)\.(\d+)\.norm1\.weight$")
_UNET_LEVEL_KEY = re.compile(r"^(downs\.\d+\.weight|ups\.\d+\.0\.weight)$")


def _is_nafnet_family(sd) -> bool:
    intro, ending = sd.get("intro.weight"), sd.get("ending.weight")
    return (intro is not None and ending is not None and intro.dim() == 4 and ending.dim() == 4
            and intro.shape[1] == ending.shape[0])


def _infer_nafnet_family(sd) -> Tuple[str, Dict[str, Any]]:
    """NAFNet / Baseline: ``intro`` and ``ending`` convolutions around ``encoders.<i>.<j>``,
    ``downs.<i>``, ``middle_blks.<j>``, ``ups.<i>.0``, ``decoders.<i>.<j>``; Baseline when the
    blocks have ``se.*`` (squeeze-and-excitation), NAFNet otherwise (``sca.*``). Both
    expansions are always returned for Baseline (official arguments), for NAFNet only when not 2."""
    if not _is_nafnet_family(sd):
        raise CheckpointError("checkpoint: no `intro.weight` / `ending.weight` convolutions found (NAFNet layout)")
    blocks: Dict[str, int] = {}
    levels = {"downs": 0, "ups": 0}
    for k in sd:
        m = _UNET_BLOCK_KEY.match(k)
        if m:
            blocks[m.group(1)] = max(blocks.get(m.group(1), 0), int(m.group(2)) + 1)
        elif _UNET_LEVEL_KEY.match(k):
            kind, i = k.split(".")[:2]
            levels[kind] = max(levels[kind], int(i) + 1)
    intro = sd["intro.weight"]
    hp: Dict[str, Any] = {"img_channel": intro.shape[1], "width": intro.shape[0],
                          "middle_blk_num": blocks.get("middle_blks", 0),
                          "enc_blk_nums": [blocks.get(f"encoders.{i}", 0) for i in range(levels["downs"])],
                          "dec_blk_nums": [blocks.get(f"decoders.{i}", 0) for i in range(levels["ups"])]}
    baseline = any(k.endswith(".se.1.weight") for k in sd)
    dw, ffn = (1, 2) if baseline else (2, 2)
    first = next((f"{name}.{j}" for name, n in blocks.items() for j in range(n)
                  if f"{name}.{j}.conv1.weight" in sd), None)
    if first is not None:
        c = sd[f"{first}.norm1.weight"].numel()
        dw, ffn = sd[f"{first}.conv1.weight"].shape[0] // c, sd[f"{first}.conv4.weight"].shape[0] // c
    if baseline:
        return "baseline", dict(hp, dw_expand=dw, ffn_expand=ffn)
    hp.update({k: v for k, v in (("dw_expand", dw), ("ffn_expand", ffn)) if v != 2})
    return "nafnet", hp


def _infer_nafnet_as(arch: str):
    def infer(sd) -> Dict[str, Any]:
        found, hp = _infer_nafnet_family(sd)
        if found.startswith("baseline") != arch.startswith("baseline"):   # forced across: keep the shapes
            hp.pop("dw_expand", None), hp.pop("ffn_expand", None)
        return hp
    return infer


def infer_arch(state_dict: Mapping) -> Tuple[str, Dict[str, Any]]:
    """``(arch, hyper-parameters)`` of an (unwrapped) state dict, from its keys and shapes.

    InvNet: ``operations.<i>.haar_weights``; MWCNN: ``head.0.body.0.weight`` with ``pro_l3.*``;
    DnCNN / FFDNet: ``model.<i>.weight`` (FFDNet when the first convolution takes
    ``4k + 1`` channels and the last gives ``4k``). NAFNet / Baseline: ``intro.weight`` and
    ``ending.weight`` (Baseline when its blocks have ``se.*``; the TLC variants ``nafnet_local``
    / ``baseline_local`` have the same keys: name them with ``arch=``). RIDNet:
    ``head.body.0.weight`` with ``b1.r1.body1.0.weight``; MPRNet: ``shallow_feat1.0.weight``
    with ``stage3_orsnet.*``. Restormer: ``patch_embed.proj.weight`` with ``output.weight``
    (see :func:`fastdenoise.models.restormer.infer_restormer`). Raises CheckpointError when
    none fits.
    """
    keys = list(state_dict)
    if any(_OP_KEY.match(k) and k.endswith(".haar_weights") for k in keys):
        return "invdn", _infer_invdn(state_dict)
    if "head.0.body.0.weight" in state_dict and any(k.startswith("pro_l3.") for k in keys):
        return "mwcnn", _infer_mwcnn(state_dict)
    if "head.body.0.weight" in state_dict and "b1.r1.body1.0.weight" in state_dict:
        return "ridnet", infer_ridnet(state_dict)
    if "shallow_feat1.0.weight" in state_dict and any(k.startswith("stage3_orsnet.") for k in keys):
        return "mprnet", infer_mprnet(state_dict)
    if "patch_embed.proj.weight" in state_dict and "output.weight" in state_dict:
        return "restormer", infer_restormer(state_dict)
    if any(_MODEL_KEY.match(k) for k in keys):
        return _infer_plain(state_dict)
    if _is_nafnet_family(state_dict):
        return _infer_nafnet_family(state_dict)
    shown = keys[:12]
    raise CheckpointError(f"checkpoint: cannot infer the architecture from its keys {shown}"
                          f"{' ...' if len(keys) > 12 else ''}; expected the layout of one of "
                          f"{tuple(ARCHS)} (pass arch=... and its hyper-parameters to force one)")


_INFER = {"invdn": _infer_invdn, "mwcnn": _infer_mwcnn}
_INFER.update(ridnet=infer_ridnet, mprnet=infer_mprnet)
_INFER.update(restormer=infer_restormer)
_INFER.update({a: _infer_nafnet_as(a) for a in ("nafnet", "nafnet_local", "baseline", "baseline_local")})


def _infer_for(arch: str, sd) -> Dict[str, Any]:
    """Best-effort hyper-parameters for a named arch ({} when the keys do not fit it: the strict
    load then says what is wrong)."""
    try:
        if arch in _INFER:
            return _INFER[arch](sd)
        found, hp = _infer_plain(sd)
        if found != arch:   # e.g. arch='dncnn' forced on an FFDNet-shaped stack: keep the shapes
            hp.pop("in_nc"), hp.pop("out_nc")
        return hp
    except (CheckpointError, KeyError, IndexError):
        return {}


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def _fmt_list(items: List[str], limit: int = 30) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}]"


def _check_fit(model: nn.Module, sd: Mapping, what: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [f"{k}: checkpoint {list(sd[k].shape)} vs model {list(v.shape)}"
                  for k, v in expected.items() if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_fmt_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_fmt_list(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {_fmt_list(mismatched)}")
        raise CheckpointError(f"checkpoint does not fit {what}: " + "; ".join(parts))


def load_official(path_or_state_dict, arch: Optional[str] = None, *, param_key: Optional[str] = None,
                  **kwargs) -> nn.Module:
    """Build the architecture an official checkpoint belongs to, load it strictly, return it in eval mode.

    ``path_or_state_dict``: a file (read with ``torch.load(path, map_location="cpu",
    weights_only=True)``) or a dict: a bare state dict, or a container holding one under
    ``params``, ``params_ema``, ``state_dict``, ``model``, ``net`` or ``network`` (in that order;
    ``param_key`` is tried first), with or without a ``module.`` prefix.
    ``arch``: ``"dncnn" | "ffdnet" | "invdn" | "mwcnn" | "ridnet" | "mprnet" | "restormer"``
    (any name in :data:`ARCHS`), or None to infer it from the keys and
    shapes (see :func:`infer_arch`). The hyper-parameters are inferred too; ``kwargs`` override
    them (e.g. ``act_mode='BL'``, which the weights cannot tell from ``'BR'``).

    Raises ValueError for an unknown ``arch``; OSError for a file that cannot be opened;
    CheckpointError, naming the file, when torch.load cannot read it as tensors and containers
    (objects that would need ``weights_only=False`` are refused, never unpickled), when the keys
    fit no known architecture, or when the checkpoint does not fit the model built (its message
    lists the missing and unexpected keys and the shape mismatches).
    """
    if arch is not None:
        arch = _arch_name(arch)                       # the caller's argument: its ValueError as it is
    path = os.fspath(path_or_state_dict) if isinstance(path_or_state_dict, (str, os.PathLike)) else None
    obj = _read(path_or_state_dict)
    try:
        return _load(obj, arch, param_key, kwargs)
    except CheckpointError as exc:
        if path is None:
            raise
        msg = str(exc)
        if msg.startswith("checkpoint: "):
            msg = msg[len("checkpoint: "):]
        elif msg.startswith("checkpoint "):
            msg = "the " + msg
        raise CheckpointError(f"{path}: {msg}") from exc


def _load(obj, arch: Optional[str], param_key: Optional[str], kwargs: dict) -> nn.Module:
    """load_official on what the file held; CheckpointError for what the checkpoint gets wrong."""
    sd = unwrap_state_dict(obj, param_key)
    # Keys that look like an architecture's but tensors that do not (a wrong rank, too few
    # layers) make the inference or the constructor raise: the checkpoint's fault.
    try:
        if arch is None:
            arch, hp = infer_arch(sd)
        else:
            hp = _infer_for(arch, sd)
    except CheckpointError:
        raise
    except (IndexError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint: its keys look like {arch or 'a known architecture'} but its tensors "
                              f"do not fit it ({type(exc).__name__}: {exc})") from exc
    inferred = dict(hp)
    hp.update(kwargs)
    try:
        model = build(arch, **hp)
    except (ValueError, TypeError) as exc:
        if kwargs:                                    # the caller's overrides may be the cause
            raise
        raise CheckpointError(f"checkpoint: its keys look like {arch} but the hyper-parameters they give "
                              f"({', '.join(f'{k}={v!r}' for k, v in inferred.items())}) do not build one: "
                              f"{exc}") from exc
    what = f"{type(model).__name__}({', '.join(f'{k}={v!r}' for k, v in hp.items())})"
    _check_fit(model, sd, what)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint does not fit {what}: {exc}") from exc
    return model.eval()
