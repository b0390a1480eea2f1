"""Real-time denoising of a sequence of frames of one size: :class:`StreamDenoiser`.

``StreamDenoiser(model, shape, dtype=torch.float16)`` prepares a copy of ``model`` for frames of
``shape`` = (H, W, C) (C = 1 or 3): weights in ``dtype`` (float16 / bfloat16 / float32),
channels_last, eval mode; ``model`` itself is left as it is. The copy is made tensor by tensor
straight into ``dtype`` on the device, so no second full-precision copy of the weights is ever
held. ``copy=False`` converts ``model`` itself instead (its parameters change dtype and layout
and it is put in eval mode), for models whose weights should not be held twice.
Frames come in as host arrays (numpy uint8 / uint16, (H, W, C) or (H, W)) or as tensors on the
model's device (float (C, H, W) or (1, C, H, W) in [0, 1]) and go out the same way (the arrays
with their dtype: ``clamp(y, 0, 1)`` scaled to the full range and rounded).

On a GPU, each frame's work -- the upload, the conversion to ``dtype`` in [0, 1], the model, the
clamp and conversion back, the download -- is laid out so consecutive frames overlap:

* two pinned host buffers and two device buffers per direction (double buffering): frame k is
  uploaded on a copy stream while frame k - 1 computes and frame k - 2 downloads on another;
* the conversion, the model and the conversion back are one CUDA graph per buffer (captured
  on the first frame of each kind; ``graphs=False`` runs them eagerly), so a frame costs one
  graph launch, not hundreds of kernel launches.

:meth:`StreamDenoiser.stream` takes an iterable of frames and yields the denoised frames in
order (one frame behind, so the pipeline stays full); calling the denoiser on one frame runs it
alone. On the CPU the same conversions run eagerly, frame by frame (no streams or graphs).

The model must keep the frame size (a denoiser) and take (1, C, H, W); a list or tuple output
(MPRNet) is taken at its first element. Models that need H, W multiples of a factor pad and
crop themselves (those of :mod:`fastdenoise.models` do).
"""

from __future__ import annotations

import copy as _copy
import operator
from typing import Callable, Dict, Iterable, Iterator, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from .errors import DeviceError, DTypeError, ShapeError

__all__ = ["StreamDenoiser"]

_UINT = {np.dtype(np.uint8): (torch.uint8, 255.0), np.dtype(np.uint16): (torch.uint16, 65535.0)}
_FLOATS = (torch.float16, torch.bfloat16, torch.float32)

Frame = Union[np.ndarray, torch.Tensor]


class StreamDenoiser:
    """See the module docstring. ``shape``: (H, W, C) or (H, W) (C = 1); ``device``: the model's
    (default: its parameters' device); ``graphs``: capture CUDA graphs (GPU only); ``copy``:
    False converts ``model`` itself instead of a copy."""

    def __init__(self, model: Callable, shape: Tuple[int, ...], dtype: torch.dtype = torch.float16, *,
                 device: Optional[Union[str, torch.device]] = None, graphs: bool = True, copy: bool = True):
        if not callable(model):
            raise TypeError(f"model: expected an nn.Module or a callable, got {type(model).__name__}")
        if dtype not in _FLOATS:
            raise DTypeError(f"dtype: expected one of (float16, bfloat16, float32), got {dtype}")
        try:                                  # whole numbers only: no float, bool or string sizes
            if isinstance(shape, (str, bytes)) or any(isinstance(s, bool) for s in shape):
                raise TypeError
            shape = tuple(operator.index(s) for s in shape)
        except TypeError:
            raise ShapeError(f"shape: expected (H, W, C) or (H, W) of integers, got {shape!r}") from None
        if len(shape) == 2:
            shape = shape + (1,)
        if len(shape) != 3 or min(shape) < 1 or shape[2] not in (1, 3):
            raise ShapeError(f"shape: expected (H, W, C) with C 1 or 3 (or (H, W)), got {list(shape)}")
        if device is None:
            params = list(model.parameters()) if isinstance(model, nn.Module) else []
            device = params[0].device if params else torch.device("cpu")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise DeviceError(f"device: expected a usable device, got {self.device} (torch sees no CUDA device)")
        self.shape, self.dtype = shape, dtype
        if isinstance(model, nn.Module):
            if copy:                          # the caller's model keeps its dtype, layout and mode
                model = _converted_copy(model, self.device, dtype)
            model = model.to(device=self.device, dtype=dtype, memory_format=torch.channels_last).eval()
        self.model = model
        self.cuda = self.device.type == "cuda"
        self.graphs = bool(graphs) and self.cuda
        self._slots: Dict[Tuple, "_Slot"] = {}
        self._k = 0
        if self.cuda:
            self._h2d = torch.cuda.Stream(self.device)
            self._d2h = torch.cuda.Stream(self.device)
            self._compute = torch.cuda.Stream(self.device)

    # -- frame checks and conversions --------------------------------------------------------

    def _kind(self, frame: Frame) -> Tuple:
        h, w, c = self.shape
        if isinstance(frame, np.ndarray):
            if frame.dtype not in _UINT:
                raise DTypeError(f"frame: expected a uint8 or uint16 array, got {frame.dtype}")
            shp = frame.shape + ((1,) if frame.ndim == 2 else ())
            if shp != (h, w, c):
                raise ShapeError(f"frame: expected an array of shape {[h, w, c]}, got {list(frame.shape)}")
            return ("host", frame.dtype)
        if isinstance(frame, torch.Tensor):
            if frame.device != self.device:
                raise DeviceError(f"frame: expected a tensor on {self.device} (the model's device), got {frame.device}")
            if frame.dtype not in _FLOATS:
                raise DTypeError(f"frame: expected a float16, bfloat16 or float32 tensor, got {frame.dtype}")
            if tuple(frame.shape[-3:]) != (c, h, w) or frame.dim() not in (3, 4) or (
                    frame.dim() == 4 and frame.shape[0] != 1):
                raise ShapeError(f"frame: expected a tensor of shape {[c, h, w]} or {[1, c, h, w]}, "
                                 f"got {list(frame.shape)}")
            return ("device", frame.dtype, frame.dim())
        raise TypeError(f"frame: expected a numpy array or a torch.Tensor, got {type(frame).__name__}")

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        if isinstance(y, (list, tuple)):
            y = y[0]
        if not isinstance(y, torch.Tensor) or y.shape != x.shape:
            got = list(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ShapeError(f"model: expected an output of the frame's shape {list(x.shape)} (a size-keeping "
                             f"denoiser), got {got}")
        return y

    def _work(self, kind: Tuple, src: torch.Tensor, own: bool = True) -> torch.Tensor:
        """Device work of one frame: ``src`` (the device input buffer; ``own=False``: the caller's
        tensor) -> the output to copy out."""
        if kind[0] == "host":
            tdtype, full = _UINT[kind[1]]
            # (1, C, H, W) channels_last view, scaled in float32 then rounded once to the model's
            # dtype (float16 has no 65535: a bright 16-bit sample would become inf)
            x = src.permute(2, 0, 1)[None].float().div_(full).to(self.dtype)
            x = x.contiguous(memory_format=torch.channels_last)
            y = self._forward(x)
            y = y.float().clamp_(0, 1).mul_(full).round_()
            return y[0].permute(1, 2, 0).to(tdtype).contiguous()
        x = src if src.dim() == 4 else src[None]
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        if not own and x.data_ptr() == src.data_ptr():
            x = x.clone(memory_format=torch.channels_last)
        y = self._forward(x)
        y = y.to(src.dtype)
        return y if src.dim() == 4 else y[0]

    # -- running -----------------------------------------------------------------------------

    def __call__(self, frame: Frame) -> Frame:
        """Denoise one frame (synchronously)."""
        out = list(self.stream([frame]))
        return out[0]

    def stream(self, frames: Iterable[Frame]) -> Iterator[Frame]:
        """Denoise ``frames`` in order; yields each result (on a GPU, one frame behind the input)."""
        if not self.cuda:
            with torch.inference_mode():
                for f in frames:
                    kind = self._kind(f)
                    yield self._cpu_frame(kind, f)
            return
        pending = None
        with torch.inference_mode():
            for f in frames:
                kind = self._kind(f)
                slot = self._slot(kind, self._k % 2)
                self._k += 1
                slot.submit(f)
                if pending is not None:
                    yield pending.result()
                pending = slot
            if pending is not None:
                yield pending.result()

    def _cpu_frame(self, kind: Tuple, f: Frame) -> Frame:
        if kind[0] == "host":
            arr = f if f.ndim == 3 else f[:, :, None]
            out = self._work(kind, torch.from_numpy(np.ascontiguousarray(arr)))
            return out.numpy().reshape(f.shape)
        # the caller's tensor is never handed to the model (which may work in place, or return it)
        return self._work(kind, f, own=False)

    def _slot(self, kind: Tuple, index: int) -> "_Slot":
        key = kind + (index,)
        if key not in self._slots:
            self._slots[key] = _Slot(self, kind)
        return self._slots[key]


def _converted_copy(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are made directly on ``device``,
    floating-point ones in ``dtype``, 4-D ones channels_last (``Module.to`` after a plain deep
    copy would first duplicate every weight at full precision on the model's device). Tensors
    shared between modules stay shared."""
    memo: Dict[int, object] = {}

    def convert(t: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if t.dim() == 4 else torch.preserve_format
        return t.detach().to(device=device, dtype=dtype if t.is_floating_point() else t.dtype,
                             memory_format=fmt, copy=True)

    with torch.no_grad():
        for p in model.parameters():
            if id(p) not in memo:
                memo[id(p)] = nn.Parameter(convert(p), requires_grad=p.requires_grad)
        for b in model.buffers():
            if id(b) not in memo:
                memo[id(b)] = convert(b)
        return _copy.deepcopy(model, memo)


class _Slot:
    """One of the two pipeline buffers of a frame kind: pinned host buffers, device buffers,
    the events ordering them, and the CUDA graph of the device work."""

    def __init__(self, owner: StreamDenoiser, kind: Tuple):
        self.o, self.kind = owner, kind
        h, w, c = owner.shape
        dev = owner.device
        if kind[0] == "host":
            tdtype, _ = _UINT[kind[1]]
            self.host_in = torch.empty((h, w, c), dtype=tdtype, pin_memory=True)
            self.dev_in = torch.empty((h, w, c), dtype=tdtype, device=dev)
            self.host_out = torch.empty((h, w, c), dtype=tdtype, pin_memory=True)
        else:
            shape = (c, h, w) if kind[2] == 3 else (1, c, h, w)
            self.dev_in = torch.empty(shape, dtype=kind[1], device=dev)
            self.host_in = self.host_out = None
        self.uploaded = torch.cuda.Event()
        self.computed = torch.cuda.Event()
        self.downloaded = torch.cuda.Event()
        self.used = False
        self.graph = None
        self.dev_out = None
        self.frame_shape = None

    def _run(self) -> None:
        o = self.o
        if not o.graphs:
            self.dev_out = o._work(self.kind, self.dev_in)
            return
        if self.graph is None:
            # warm-up on the compute stream (allocations, autotuning), then capture
            for _ in range(2):
                self.dev_out = o._work(self.kind, self.dev_in)
            o._compute.synchronize()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=o._compute):
                self.dev_out = o._work(self.kind, self.dev_in)
        self.graph.replay()

    def submit(self, frame: Frame) -> None:
        o = self.o
        if self.used:
            # this slot's previous frame: its upload must be done before its pinned buffer is
            # refilled, its download before its output buffer is overwritten
            self.uploaded.synchronize()
        self.used = True
        if self.kind[0] == "host":
            self.frame_shape = frame.shape
            arr = frame if frame.ndim == 3 else frame[:, :, None]
            np.copyto(self.host_in.numpy(), arr, casting="no")
            with torch.cuda.stream(o._h2d):
                o._h2d.wait_event(self.computed)           # the previous replay has read dev_in
                self.dev_in.copy_(self.host_in, non_blocking=True)
                self.uploaded.record(o._h2d)
        else:
            caller = torch.cuda.current_stream(o.device)      # where the frame was produced
            with torch.cuda.stream(o._h2d):
                o._h2d.wait_stream(caller)                     # the frame is ready
                o._h2d.wait_event(self.computed)
                self.dev_in.copy_(frame, non_blocking=True)
                frame.record_stream(o._h2d)                    # read here: not freed before
                self.uploaded.record(o._h2d)
        with torch.cuda.stream(o._compute):
            o._compute.wait_event(self.uploaded)
            o._compute.wait_event(self.downloaded)         # dev_out's last frame is out
            self._run()
            self.computed.record(o._compute)
        if self.kind[0] == "host":
            with torch.cuda.stream(o._d2h):
                o._d2h.wait_event(self.computed)
                self.host_out.copy_(self.dev_out, non_blocking=True)
                self.downloaded.record(o._d2h)

    def result(self) -> Frame:
        o = self.o
        if self.kind[0] == "host":
            self.downloaded.synchronize()
            return self.host_out.numpy().reshape(self.frame_shape).copy()
        torch.cuda.current_stream(o.device).wait_event(self.computed)
        res = self.dev_out.clone()
        self.downloaded.record(torch.cuda.current_stream(o.device))     # dev_out may be rewritten now
        return res
