"""Tiled inference: run a model over an image of any size in overlapping tiles, stitched with
:func:`fastdenoise.ops.overlap_add`.

``fastdenoise.tiled(model, tile=512, overlap=None, blend="hann", batch=None, multiple=None)``
returns a module whose ``forward(x, *args)`` runs ``model`` on (B, C, H, W) inputs of any size.

**Grid.** Per axis of n pixels (after padding n to a multiple of ``multiple``, see below): one
tile of the whole axis when it fits in ``tile``; otherwise tiles of ``tile`` pixels starting at
0, s, 2s, ... (stride ``s = tile - overlap``) and a last one ending exactly at the border. Tiles
never reach past the image, so a convolution's own zero padding at the image border is what the
untiled model sees too.

**Blending** (per-pixel windows, the product of one window per axis; the weights are divided out
at the end, so any positive weights give a weighted mean):

* ``"hann"``: across the overlap of two neighbouring tiles (L pixels), each tile gets weight 0
  on the quarter of the overlap nearest its own edge (where its output suffers most from the
  missing context), the first fades out as ``cos^2(pi/2 (k + 1/2) / M)`` and the second fades
  in as ``sin^2(...)`` over the middle half (M pixels): the two weights sum to one at every
  pixel, and at the image borders there is no fade. No uniform averaging: the seam error falls
  as the overlap grows, and a local model whose receptive-field radius is at most L / 4 gives
  the untiled output.
* ``"crop"``: each tile keeps only its part up to the middle of each overlap (the margins are
  discarded; at the image borders nothing is). For a purely local model whose receptive-field
  radius is at most half the overlap, the result is the untiled output (to float rounding).
* ``"average"``: every tile pixel weighs 1 -- the official scripts' behaviour, for comparison.

**Alignment.** ``multiple`` (the model's down-sampling factor; known for the models of
:mod:`fastdenoise.models`, 1 otherwise) rounds ``tile`` and the stride up to multiples of it and
pads the image at the bottom / right to a multiple of it (reflection; replication for images
too short to reflect), so every tile sits on the model's pixel grid; the output is cropped back.
The stride is rounded down, so the overlap is at least the one asked; an overlap the rounded
tile cannot hold (more than the tile less one stride of ``multiple``: :func:`max_overlap`) is
an error (the default overlap is capped to it instead).

**Devices.** Tiles are given to the model in its parameters' dtype and the output has the
input's dtype and memory format. The input may be on the CPU while the model is on a GPU: tiles go to the GPU a
batch at a time and come back to the host, where the output and the weight map (float32)
are accumulated -- GPU memory is bounded by the tile batch, not by the image. The host-to-device
copy of the next batch and the device-to-host copy of the last one run on their own CUDA streams
from pinned buffers, overlapping the model. An out-of-memory error on the GPU halves the batch
(then the tile) and starts again, with a warning.

**Memory.** :func:`estimate_memory` measures a model's peak memory per pixel on a small probe
image (the bytes of the tensors its ops return, live at once: :func:`measure_peak_memory`, on any
device), :func:`available_memory` says what the device has left (on the host: MemAvailable,
capped by a container's cgroup limit) and :func:`plan_tile` picks the largest tile whose run
fits in ``MEMORY_HEADROOM`` of it, or none when the whole image does. The command line uses
them before running a checkpoint (on the CPU, running out of memory means swapping or the
process being killed).

**Inference only.** The tiles run under ``torch.no_grad()`` (no tile's autograd graph is kept,
whatever the parameters ask) and the output carries no gradient; an input that requires grad
under grad mode is refused.

**Extra arguments.** ``forward(x, *args)``: a tensor argument whose first dimension is B (e.g.
FFDNet's per-image noise level) is given, per tile, the rows of the tiles' images; other
arguments are passed as they are. A model returning a list or tuple (MPRNet) is taken at its
first element.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ._checks import FLOAT_DTYPES, check_tensor, memory_format_of
from .errors import DTypeError, ShapeError
from .ops.overlap_add import overlap_add, overlap_normalize

__all__ = ["tiled", "TiledModel", "BLENDS", "model_multiple", "default_overlap", "tile_starts", "axis_windows",
           "MemoryEstimate", "measure_peak_memory", "estimate_memory", "available_memory", "plan_tile",
           "tiled_bytes", "max_overlap"]

BLENDS = ("hann", "crop", "average")
#: the tile counter on stderr (runs longer than two seconds) is redrawn at most this often, in seconds
PROGRESS_INTERVAL = 0.5


# --------------------------------------------------------------------------------------------
# What the known models need
# --------------------------------------------------------------------------------------------

def _unwrap(model) -> object:
    return getattr(model, "__self__", model)          # a bound method (model.denoise): its module


def model_multiple(model) -> int:
    """The down-sampling factor tile positions and sizes align to, for the models of
    :mod:`fastdenoise.models` (and official models of the same class names); 1 otherwise."""
    m = _unwrap(model)
    name = type(m).__name__
    if name in ("Restormer", "MPRNet", "MWCNN"):
        return 8
    if name in ("NAFNet", "NAFNetLocal", "Baseline", "BaselineLocal"):
        return 2 ** len(getattr(m, "enc_blk_nums", (0, 0, 0, 0)))
    if name == "InvNet":
        return 2 ** int(getattr(m, "down_num", 2))
    if name == "FFDNet":
        return 2
    return 1


def _receptive_radius(m) -> Optional[int]:
    """Receptive-field radius of a plain stack of convolutions (DnCNN / FFDNet), else None."""
    name = type(m).__name__
    if name not in ("DnCNN", "FFDNet"):
        return None
    radius = 0
    for conv in m.modules():
        if isinstance(conv, nn.Conv2d):
            radius += (conv.kernel_size[0] // 2) * conv.dilation[0]
    return radius * (2 if name == "FFDNet" else 1)     # FFDNet works at half resolution


def default_overlap(model, tile: int) -> int:
    """The overlap ``tiled`` uses when none is given.

    * Purely local models with a known receptive field (DnCNN, FFDNet): four times the
      receptive-field radius (rounded up to 8), at most the tile less 8: with ``"hann"`` (and
      ``"crop"``, which needs only twice the radius) the output is then the untiled one when the
      tile allows it (tests/test_tiling.py checks it).
    * Everything else (global statistics: channel attention, MDTA; or unknown): an eighth of
      the tile, at least 32 pixels (see ``benchmarks/results/`` for the measured
      tiled-vs-untiled error against the overlap).
    """
    r = _receptive_radius(_unwrap(model))
    if r is not None:
        return min(max(8, 8 * math.ceil(4 * r / 8)), max(0, tile - 8))
    return min(max(32, tile // 8), max(0, tile // 2))


# --------------------------------------------------------------------------------------------
# The grid and the windows
# --------------------------------------------------------------------------------------------

def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def tile_starts(n: int, tile: int, overlap: int, multiple: int = 1) -> Tuple[int, List[int]]:
    """(tile length, starts) along an axis of ``n`` pixels (``n`` a multiple of ``multiple``):
    one tile of the whole axis when ``n <= tile``; else starts 0, s, 2s, ... with ``s = tile -
    overlap`` rounded down to ``multiple`` (so the overlap is at least the one asked) and a last
    start ``n - tile``."""
    tile = _round_up(max(tile, multiple), multiple)
    if n <= tile:
        return n, [0]
    stride = max(multiple, (tile - overlap) // multiple * multiple)
    starts = list(range(0, n - tile, stride)) + [n - tile]
    return tile, starts


def _ramp(length: int, dtype=torch.float64) -> torch.Tensor:
    k = torch.arange(length, dtype=dtype)
    return torch.sin(0.5 * math.pi * (k + 0.5) / length) ** 2


def axis_windows(starts: Sequence[int], tile: int, blend: str) -> List[torch.Tensor]:
    """One 1-D window (float32, ``tile`` long) per tile along an axis (see the module docstring)."""
    out = []
    for i, s in enumerate(starts):
        w = torch.ones(tile, dtype=torch.float64)
        if blend != "average":
            if i > 0:                                     # overlap with the previous tile
                _fade(w, s - starts[i - 1], tile, blend, rising=True)
            if i + 1 < len(starts):                       # overlap with the next tile
                _fade(w, starts[i + 1] - s, tile, blend, rising=False)
        out.append(w.float())
    return out


def _fade(w: torch.Tensor, step: int, tile: int, blend: str, rising: bool) -> None:
    """Shape ``w`` over its overlap with a neighbour ``step`` pixels away (before it when
    ``rising``, after it otherwise): the overlap has ``L = tile - step`` pixels; ``"crop"`` cuts
    at its middle; ``"hann"`` is 0 over its outer quarter, fades over its middle half and is 1
    over its inner quarter (the two neighbours' weights sum to one)."""
    length = tile - step
    if length <= 0:
        return
    if blend == "crop":
        cut = length // 2
        if rising:
            w[:cut] = 0
        else:
            w[tile - length + cut:] = 0
        return
    outer = length // 4
    ramp_len = length - 2 * outer
    ramp = _ramp(ramp_len)
    if rising:
        w[:outer] = 0
        w[outer:outer + ramp_len] *= ramp
    else:
        first = tile - length
        w[first + outer:first + outer + ramp_len] *= 1 - ramp
        w[first + outer + ramp_len:] = 0


def max_overlap(tile: int, multiple: int = 1) -> int:
    """The largest overlap tiles of ``tile`` pixels aligned to ``multiple`` can have: the tile
    rounded up to ``multiple``, less the smallest stride (``multiple``)."""
    return max(0, _round_up(max(tile, multiple), multiple) - multiple)


def _grid(h: int, w: int, tile: int, overlap: int, m: int):
    """(padded H, padded W, (tile height, row starts), (tile width, column starts)) of the tiles
    over an h x w image aligned to ``m`` (the overlap capped to what the rounded tile allows)."""
    hp, wp = _round_up(h, m), _round_up(w, m)
    overlap = min(overlap, max_overlap(tile, m))
    return hp, wp, tile_starts(hp, tile, overlap, m), tile_starts(wp, tile, overlap, m)


def _pad_mode(n: int, pad: int) -> str:
    return "reflect" if pad < n else "replicate"


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------

#: tiles per forward when ``batch`` is not given, on a GPU (on the CPU: one)
CUDA_TILE_BATCH = 4


def default_batch(device) -> int:
    """The tiles per forward :class:`TiledModel` runs on ``device`` when ``batch`` is not given."""
    return CUDA_TILE_BATCH if torch.device(device).type == "cuda" else 1


class TiledModel(nn.Module):
    """``model`` run in tiles (see the module docstring and :func:`tiled`)."""

    def __init__(self, model: Callable, tile: int = 512, overlap: Optional[int] = None, blend: str = "hann",
                 batch: Optional[int] = None, multiple: Optional[int] = None, progress: bool = True):
        super().__init__()
        if not callable(model):
            raise TypeError(f"model: expected an nn.Module or a callable, got {type(model).__name__}")
        if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
            raise ValueError(f"tile: expected a positive int, got {tile!r}")
        if blend not in BLENDS:
            raise ValueError(f"blend: expected one of {BLENDS}, got {blend!r}")
        if multiple is None:
            multiple = model_multiple(model)
        if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
            raise ValueError(f"multiple: expected a positive int, got {multiple!r}")
        if overlap is None:
            overlap = default_overlap(model, tile)      # capped to the rounded tile by _grid
        else:
            if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < tile:
                raise ValueError(f"overlap: expected an int in [0, tile={tile}), got {overlap!r}")
            most = max_overlap(tile, multiple)
            if overlap > most:
                raise ValueError(f"overlap: expected at most {most} with tile={tile} and multiple={multiple} (the "
                                 f"tile rounded up to {_round_up(max(tile, multiple), multiple)}, less one stride of "
                                 f"{multiple}), got {overlap}")
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
            raise ValueError(f"batch: expected a positive int or None, got {batch!r}")
        if isinstance(model, nn.Module):
            self.model = model
        else:
            self._fn = model
        self.tile, self.overlap, self.blend, self.batch = tile, overlap, blend, batch
        self.multiple, self.progress = multiple, bool(progress)

    # -- helpers -----------------------------------------------------------------------------

    def _call(self, t: torch.Tensor, args) -> torch.Tensor:
        fn = self.model if "model" in self._modules else self._fn
        y = fn(t, *args)
        if isinstance(y, (list, tuple)) and y:
            y = y[0]
        _check_output(y, t)
        return y

    def _model_where(self, x: torch.Tensor) -> Tuple[torch.device, torch.dtype]:
        """The device and dtype of the model's parameters (x's when it has none)."""
        m = _unwrap(self.model if "model" in self._modules else self._fn)
        if isinstance(m, nn.Module):
            for p in m.parameters():
                if p.is_floating_point():
                    return p.device, p.dtype
        return x.device, x.dtype

    def extra_repr(self) -> str:
        return (f"tile={self.tile}, overlap={self.overlap}, blend={self.blend!r}, batch={self.batch}, "
                f"multiple={self.multiple}")

    # -- forward -----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:
        check_tensor("x", x)
        if torch.is_grad_enabled() and x.requires_grad:
            raise ValueError("x: expected a tensor that does not require grad: tiled inference is not "
                             "differentiable (its output carries no gradient); detach x or run under torch.no_grad()")
        with torch.no_grad():       # inference: no tile's graph is kept, whatever the parameters ask
            return self._forward(x, args)

    def _forward(self, x: torch.Tensor, args) -> torch.Tensor:
        dev, mdtype = self._model_where(x)
        batch = self.batch or default_batch(dev)
        tile = self.tile
        while True:
            try:
                return self._run(x, args, (dev, mdtype), tile, batch)
            except torch.cuda.OutOfMemoryError:
                if dev.type != "cuda":
                    raise
                torch.cuda.empty_cache()
                if batch > 1:
                    batch //= 2
                elif tile // 2 >= max(self.multiple, self.overlap + self.multiple, 8):
                    tile //= 2
                else:
                    raise
                warnings.warn(f"fastdenoise.tiled: out of GPU memory; retrying with batch={batch}, tile={tile}",
                              RuntimeWarning, stacklevel=2)

    def _run(self, x, args, where, tile, batch) -> torch.Tensor:
        dev, mdtype = where
        b, _, h, w = x.shape
        hp, wp, (th, ys), (tw, xs) = _grid(h, w, tile, self.overlap, self.multiple)
        wy, wx = axis_windows(ys, th, self.blend), axis_windows(xs, tw, self.blend)
        jobs = [(bi, i, j) for bi in range(b) for i in range(len(ys)) for j in range(len(xs))]
        host = x.device
        out = weight = None
        started, shown = time.monotonic(), False
        drawn = started - PROGRESS_INTERVAL
        stream = _Streams(dev, host) if dev.type == "cuda" and host.type == "cpu" else None
        pending = None                               # (tiles on the host, positions, windows)
        for k in range(0, len(jobs), batch):
            chunk = jobs[k:k + batch]
            crops = [self._crop(x, bi, ys[i], xs[j], th, tw, h, w) for bi, i, j in chunk]
            inp = torch.stack(crops).to(mdtype)
            targs = tuple(_per_tile(a, [c[0] for c in chunk], b, dev) for a in args)
            if stream is not None:
                y = stream.run(lambda t: self._call(t, targs), inp)
            else:
                y = self._call(inp.to(dev), targs)
            positions = torch.tensor([[bi, ys[i], xs[j]] for bi, i, j in chunk], dtype=torch.int64)
            windows = torch.stack([wy[i][:, None] * wx[j][None, :] for _, i, j in chunk])
            if out is None:
                out = torch.zeros((b, y.shape[1], hp, wp), dtype=torch.float32, device=host)
                weight = torch.zeros((b, 1, hp, wp), dtype=torch.float32, device=host)
            if pending is not None:          # the previous batch, while this one computes
                overlap_add(_host(pending[0]), pending[1], out, weight, pending[2].to(host))
            tiles = stream.fetch(y) if stream is not None else y.to(host)
            pending = (tiles, positions, windows)
            done = min(k + batch, len(jobs))
            now = time.monotonic() if self.progress and len(jobs) > batch else started
            if now - started > 2.0 and (now - drawn >= PROGRESS_INTERVAL or done == len(jobs)):
                shown, drawn = True, now
                sys.stderr.write(f"\rfastdenoise.tiled: {done}/{len(jobs)} tiles")
                sys.stderr.flush()
        if pending is not None:
            overlap_add(_host(pending[0]), pending[1], out, weight, pending[2].to(host))
        if shown:
            sys.stderr.write("\n")
        res = overlap_normalize(out, weight)[:, :, :h, :w]
        return res.to(x.dtype).contiguous(memory_format=memory_format_of(x))

    @staticmethod
    def _crop(x, bi, y0, x0, th, tw, h, w) -> torch.Tensor:
        """Rows y0 .. y0 + th, columns x0 .. x0 + tw of image bi, padded past H / W (the padding
        of the whole image to a multiple, applied to this tile: the same pixels)."""
        c = x[bi, :, y0:min(y0 + th, h), x0:min(x0 + tw, w)]
        ph, pw = th - c.shape[1], tw - c.shape[2]
        if ph or pw:
            mode = "reflect" if ph < c.shape[1] and pw < c.shape[2] else "replicate"
            c = F.pad(c[None], (0, pw, 0, ph), mode=mode)[0]
        return c


class _Streams:
    """Host <-> device copies of a tile batch on their own CUDA streams, from pinned memory."""

    def __init__(self, dev: torch.device, host: torch.device):
        self.dev, self.host = dev, host
        self.h2d = torch.cuda.Stream(dev)
        self.d2h = torch.cuda.Stream(dev)
        self.done = None

    def run(self, fn, inp: torch.Tensor) -> torch.Tensor:
        pinned = inp.pin_memory()
        with torch.cuda.stream(self.h2d):
            dev_in = pinned.to(self.dev, non_blocking=True)
        compute = torch.cuda.current_stream(self.dev)
        compute.wait_stream(self.h2d)
        dev_in.record_stream(compute)
        return fn(dev_in)

    def fetch(self, y: torch.Tensor) -> torch.Tensor:
        """Start copying ``y`` to a pinned host tensor; :meth:`wait` (or the next fetch) before use."""
        compute = torch.cuda.current_stream(self.dev)
        self.d2h.wait_stream(compute)
        host = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
        with torch.cuda.stream(self.d2h):
            host.copy_(y, non_blocking=True)
            y.record_stream(self.d2h)
            self.done = torch.cuda.Event()
            self.done.record(self.d2h)
        return _Pending(host, self.done)



def _check_output(y, t: torch.Tensor) -> None:
    """The model's output for the tile batch ``t`` (N, C, th, tw) must be a float (N, C', th, tw)
    tensor: tiles are stitched pixel for pixel, so the model must keep the spatial size."""
    n, _, th, tw = t.shape
    want = f"a float (N, C, th, tw) = ({n}, C, {th}, {tw}) tensor for the tile batch {list(t.shape)}"
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"model: expected {want}, got {type(y).__name__}")
    if y.dim() != 4 or y.shape[0] != n or tuple(y.shape[2:]) != (th, tw):
        raise ShapeError(f"model: expected {want}, got shape {list(y.shape)} (tiled() needs a model whose "
                         f"output has its input's batch, height and width)")
    if y.dtype not in FLOAT_DTYPES:
        raise DTypeError(f"model: expected {want}, got dtype {str(y.dtype).replace('torch.', '')}")


def _per_tile(a, images: List[int], b: int, dev: torch.device):
    """An extra argument for a batch of tiles: a tensor with one row per image gives the rows of
    the tiles' images; tensors go to the model's device; anything else is passed as it is."""
    if not isinstance(a, torch.Tensor):
        return a
    if a.dim() >= 1 and a.shape[0] == b and b > 1:
        a = a[torch.tensor(images, device=a.device)]
    return a.to(dev)


def _host(t):
    """A tile batch on the host: waits for its device-to-host copy when it is still in flight."""
    return t.get() if isinstance(t, _Pending) else t


class _Pending:
    def __init__(self, host: torch.Tensor, event):
        self.host, self.event = host, event

    def get(self) -> torch.Tensor:
        self.event.synchronize()
        return self.host


def tiled(model: Callable, tile: int = 512, overlap: Optional[int] = None, blend: str = "hann",
          batch: Optional[int] = None, multiple: Optional[int] = None, *, progress: bool = True) -> TiledModel:
    """``model`` run in ``tile``-pixel tiles overlapping by ``overlap`` pixels (None: the
    model's default, :func:`default_overlap`), ``batch`` tiles per forward (None: 4 on a GPU,
    1 on the CPU), blended with ``blend`` (``"hann"``, ``"crop"``, ``"average"``), aligned to
    ``multiple`` (None: the model's down-sampling factor, :func:`model_multiple`). ``progress``:
    a tile counter on stderr for runs longer than two seconds. See the module docstring."""
    return TiledModel(model, tile, overlap, blend, batch, multiple, progress)


# --------------------------------------------------------------------------------------------
# Memory: does the image fit untiled, and if not, how large a tile does
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of one forward as ``per_pixel * H * W`` bytes (the tensors the ops return, live
    at once; the caller's input and the parameters, already allocated, are not counted), and the
    channels of the output."""
    per_pixel: float
    out_channels: int

    def at(self, h: int, w: int) -> int:
        """Predicted peak bytes for one (1, C, h, w) input."""
        return int(math.ceil(self.per_pixel * h * w))


def _storage(t: torch.Tensor) -> Tuple[tuple, int]:
    """((device, address), bytes) of a tensor's storage; bytes 0 for a tensor without one."""
    try:
        storage = t.untyped_storage()
        return (str(storage.device), storage.data_ptr()), storage.nbytes()
    except (RuntimeError, NotImplementedError):
        return (None, 0), 0


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of the storages that the ops run under it allocate, while some tensor
    that an op returned still refers to them, and keeps the peak. A storage an op's input
    already had (a view, an in-place result, the caller's tensors) is not new memory. Buffers an
    op allocates and frees inside itself (a convolution's workspace) are not seen."""

    def __init__(self):
        super().__init__()
        self.refs: dict = {}       # (device, storage address) -> live tensors an op returned on it
        self.nbytes: dict = {}     # (device, storage address) -> its size
        self.live = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_storage(t)[0] for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            key, size = _storage(t)
            if size == 0 or (key in inputs and key not in self.refs):
                continue                          # the caller's memory (or nothing)
            if key not in self.refs:              # a fresh allocation
                self.refs[key], self.nbytes[key] = 0, size
                self.live += size
                self.peak = max(self.peak, self.live)
            self.refs[key] += 1
            weakref.finalize(t, self._release, key)
        return out

    def _release(self, key: tuple) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.live -= self.nbytes.pop(key)


def measure_peak_memory(fn: Callable, x: torch.Tensor) -> Tuple[int, torch.Tensor]:
    """(peak bytes of the tensors that the ops inside ``fn(x)`` return -- see
    :class:`MemoryEstimate` --, the output). Runs ``fn`` once, on any device."""
    with _LiveBytes() as counter:
        y = fn(x)
    return counter.peak, y


def estimate_memory(fn: Callable, channels: int, dtype: torch.dtype = torch.float32,
                    device="cpu", *, multiple: int = 1, size: int = 256) -> MemoryEstimate:
    """Peak memory per pixel of ``fn`` on (1, ``channels``, H, W) inputs, measured by running it
    once on a random ``size`` x ``size`` image (rounded up to ``multiple``; channels_last). The
    denoisers' activations grow in proportion to the pixel count; what does not (fixed buffers;
    blocks that run a small image in one piece and a large one in bands, as Restormer's GDFN)
    makes a small probe err on the high side for a large image. Workspaces inside an op and the
    allocator's own overhead are not counted: leave headroom (:func:`plan_tile` does)."""
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels: expected a positive int, got {channels!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size: expected a positive int, got {size!r}")
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple: expected a positive int, got {multiple!r}")
    s = _round_up(size, multiple)
    gen = torch.Generator().manual_seed(0)
    probe = torch.rand((1, channels, s, s), generator=gen).to(device=device, dtype=dtype)
    probe = probe.contiguous(memory_format=torch.channels_last)
    peak, y = measure_peak_memory(fn, probe)
    y = y[0] if isinstance(y, (list, tuple)) else y
    out_c = int(y.shape[1]) if isinstance(y, torch.Tensor) and y.dim() == 4 else channels
    return MemoryEstimate(peak / (s * s), out_c)


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _meminfo_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_available(root: str = "/sys/fs/cgroup") -> Optional[int]:
    """What a container's memory limit still allows (cgroup v2, else v1); None without a limit.
    Reclaimable page cache (inactive files) counts as available, as in MemAvailable."""
    for limit_f, usage_f, stat_f in (("memory.max", "memory.current", "memory.stat"),
                                     ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes",
                                      "memory/memory.stat")):
        limit_f, usage_f, stat_f = (os.path.join(root, f) for f in (limit_f, usage_f, stat_f))
        limit, usage = _read_int(limit_f), _read_int(usage_f)
        if limit is None or usage is None or limit >= 1 << 60:      # "max" or v1's "no limit"
            continue
        inactive = 0
        try:
            with open(stat_f) as f:
                for line in f:
                    name, _, value = line.partition(" ")
                    if name in ("inactive_file", "total_inactive_file"):
                        inactive = int(value)
                        break
        except (OSError, ValueError):
            pass
        return max(0, limit - usage + inactive)
    return None


def available_memory(device="cpu") -> Optional[int]:
    """Bytes a forward on ``device`` can still allocate: on a GPU, the free device memory plus
    what PyTorch's allocator holds unused; on the CPU, the host's available memory (Linux
    MemAvailable, else the free pages) capped by a container's cgroup limit. None when unknown."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev))
    if dev.type != "cpu":
        return None
    known = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    return min(known) if known else None


#: share of the available memory a run plans to use: the rest is for what the estimate does not
#: see (workspaces inside ops, the allocator's overhead and fragmentation over many tiles; on the
#: development VM the process grew 2 % (DnCNN) to 32 % (Restormer) beyond the estimate of one
#: forward at 384^2 to 1024^2 pixels; see the README)
MEMORY_HEADROOM = 0.5
#: the tile sizes :func:`plan_tile` tries, largest first
TILE_CANDIDATES = (4096, 2048, 1024, 512, 256, 128, 64)


def tiled_bytes(estimate: MemoryEstimate, b: int, h: int, w: int, tile: int, overlap: int, multiple: int,
                batch: int = 1) -> int:
    """Predicted peak bytes of :class:`TiledModel` running ``batch`` tiles per forward on a
    (b, C, h, w) input held on the same device: the forward of ``batch`` tiles (fewer when the
    image has fewer) plus what is kept for the whole image -- the float32 output accumulator and
    weight map, the normalised output and its copy in the input's dtype and memory format
    (counted as float32)."""
    hp, wp, (th, ys), (tw, xs) = _grid(h, w, tile, overlap, multiple)
    whole = b * hp * wp * 4 * (3 * estimate.out_channels + 1)
    return min(batch, b * len(ys) * len(xs)) * estimate.at(th, tw) + whole


def plan_tile(estimate: MemoryEstimate, shape: Sequence[int], budget: int, *, overlap: Callable[[int], int],
              multiple: int = 1, batch: int = 1,
              candidates: Sequence[int] = TILE_CANDIDATES) -> Tuple[Optional[int], int]:
    """(tile, untiled bytes) for a (B, C, H, W) input on a device with ``budget`` bytes available.

    ``tile`` is None when the untiled run (``B * estimate.at(H, W)``, H and W rounded up to
    ``multiple``) fits in ``MEMORY_HEADROOM * budget``. Otherwise it is the largest of
    ``candidates`` (multiples of ``multiple``, smaller than the image's longer side) whose tiled
    run (:func:`tiled_bytes`, ``batch`` tiles per forward) fits, among those
    whose stride is at least half the tile (``overlap(tile)``, the overlap used with a tile size,
    at most half of it: tiny tiles that would mostly recompute their neighbours' pixels are not
    taken); when none fits, the smallest of those. None also when no candidate qualifies."""
    if not isinstance(estimate, MemoryEstimate):
        raise TypeError(f"estimate: expected a MemoryEstimate, got {type(estimate).__name__}")
    if len(shape) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape):
        raise ValueError(f"shape: expected (B, C, H, W) of positive ints, got {tuple(shape)!r}")
    for name, v in (("budget", budget), ("multiple", multiple), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "budget" else 1):
            raise ValueError(f"{name}: expected a {'non-negative' if name == 'budget' else 'positive'} int, got {v!r}")
    b, _, h, w = shape
    need = b * estimate.at(_round_up(h, multiple), _round_up(w, multiple))
    usable = MEMORY_HEADROOM * budget
    if need <= usable:
        return None, need
    usable_tiles = [t for t in sorted(candidates, reverse=True)
                    if t < max(h, w) and t % multiple == 0 and 2 * overlap(t) <= t]
    for t in usable_tiles:
        if tiled_bytes(estimate, b, h, w, t, overlap(t), multiple, batch) <= usable:
            return t, need
    return (usable_tiles[-1] if usable_tiles else None), need
