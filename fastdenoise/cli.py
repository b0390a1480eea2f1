"""The ``fastdenoise`` command line (also ``python -m fastdenoise``).

``fastdenoise denoise INPUT... -o OUTPUT [--method bm3d|nlm|CHECKPOINT] [--sigma S]
[--device cuda|cpu] [--dtype float32|float16|bfloat16] [--reference CLEAN] [--tile T]
[--overlap P] [--blend hann|crop|average] [--stream] [--overwrite] [--no-progress]`` denoises
image files;
``fastdenoise info`` prints versions, what was compiled and the GPU (``fastdenoise-info``).

:func:`main` returns the exit code: 0 when every file was denoised or skipped, 1 when some
file failed, 2 for a usage error (bad arguments, a checkpoint that does not load, a method
or device that is not available), as argparse does. User errors are one line on stderr,
``error: <file>: <reason>``, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, TextIO

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__
from .errors import CheckpointError, FastDenoiseError
from .io import IMAGE_EXTENSIONS, SIXTEEN_BIT_EXTENSIONS, _pil, quantize, read_pixels, to_float, write_image

__all__ = ["main", "build_parser"]

CLASSICAL_METHODS = ("bm3d", "nlm")
#: --dtype: the precision a checkpoint's model runs in
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: The SSIM window is 11 x 11: smaller images get no SSIM.
_SSIM_MIN_SIZE = 11


class UsageError(Exception):
    """A problem with the command as a whole (exit code 2), reported as ``error: <message>``."""


class FileError(Exception):
    """A problem with one input file: reported as ``error: <file>: <message>``, the file counts
    as failed and the others go on."""


# ============================================================================================
# Arguments
# ============================================================================================

def _sigma_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number on the 0-255 scale (e.g. 25), got {text!r}") from None
    if not math.isfinite(value) or value <= 0 or value > 255:
        # above 255 the noise is larger than the whole range: a value on another scale, most likely
        raise argparse.ArgumentTypeError(f"expected a positive number of at most 255 on the 0-255 scale "
                                         f"(e.g. 25), got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


_DENOISE_HELP = """\
Denoise PNG, TIFF and JPEG images (8 or 16 bits per sample, grey or colour). Each output keeps
its input's bit depth and colour type; its format follows its extension (JPEG is always 8-bit).

OUTPUT: with one INPUT file, OUTPUT is the output file unless it is an existing directory or
ends in '/'; otherwise OUTPUT is a directory (created if needed) and the outputs keep the
input file names. An INPUT directory stands for its image files (.png .tif .tiff .jpg .jpeg,
any case, sorted, not recursive).
"""

_DENOISE_EPILOG = """\
An existing output is left alone and reported as skipped unless --overwrite is given; skipped
files do not make the run fail. A missing, corrupt or unsupported input is reported as
'error: <file>: <reason>' and the other inputs are still denoised.

exit status: 0 all files denoised or skipped, 1 some file failed, 2 usage error (bad
arguments, a checkpoint that does not load, a method or device that is not available).

examples:
  fastdenoise denoise noisy.png -o clean.png
  fastdenoise denoise photos/ -o out/ --sigma 15 --method nlm
  fastdenoise denoise noisy.tif -o out.tif --method ffdnet_color.pth --device cpu
  fastdenoise denoise noisy.png -o den.png --reference clean.png   # prints PSNR and SSIM
  fastdenoise denoise scan.tif -o clean.tif --method restormer.pth --tile 512 --overlap 64
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastdenoise", description="Fast image denoising: classical (BM3D, NLM) and official checkpoints.")
    parser.add_argument("--version", action="version", version=f"fastdenoise {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    d = sub.add_parser("denoise", help="denoise image files", description=_DENOISE_HELP, epilog=_DENOISE_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or directories of images")
    d.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="output file or directory (see above)")
    d.add_argument("--method", default="bm3d", metavar="bm3d|nlm|CHECKPOINT",
                   help="bm3d (default), nlm (non-local means), or the path of an official DnCNN, FFDNet, "
                        "InvDN, MWCNN, RIDNet, MPRNet, NAFNet / Baseline or Restormer checkpoint (FFDNet "
                        "gets the noise level)")
    d.add_argument("--sigma", type=_sigma_arg, metavar="S",
                   help="noise standard deviation on the 0-255 scale whatever the bit depth: 25 means 25/255 "
                        "of the full range, for 16-bit images too (25 * 257 in 16-bit units). Default: "
                        "estimated for each image")
    d.add_argument("--device", choices=("cuda", "cpu"), default=None,
                   help="where to run: cuda when torch sees a GPU, else cpu")
    d.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                   help="precision of a checkpoint's model and its input (default float32; float16 and "
                        "bfloat16 are for GPUs: half the memory, faster). Checkpoints always run in the "
                        "channels_last memory format. bm3d and nlm run in float32")
    d.add_argument("--reference", metavar="CLEAN",
                   help="the clean image (or a directory of clean images matched by file name): print "
                        "PSNR and SSIM of each output against it, on [0, 1] images")
    d.add_argument("--tile", type=_positive_int, metavar="T",
                   help="run a checkpoint in T x T tiles stitched seamlessly (fastdenoise.tiled); without it "
                        "an image that does not fit in GPU memory is tiled automatically (tile 1024), and on the "
                        "CPU one whose run would not fit in the available host memory (the largest tile that fits)")
    d.add_argument("--overlap", type=_non_negative_int, metavar="P",
                   help="overlap of the tiles in pixels (default: the model's, see fastdenoise.tiling)")
    d.add_argument("--blend", choices=("hann", "crop", "average"), default="hann",
                   help="how overlapping tiles are blended (default hann)")
    d.add_argument("--stream", action="store_true",
                   help="denoise the inputs as frames of a video through fastdenoise.StreamDenoiser (channels_last, "
                        "CUDA graphs on a GPU; one per frame size); blind checkpoints only")
    d.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    d.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    d.add_argument("--debug", action="store_true", help="print tracebacks of unexpected errors")
    d.set_defaults(func=_cmd_denoise)

    i = sub.add_parser("info", help="versions, what was compiled, and the GPU",
                       description="Print the fastdenoise, Python, torch and Triton versions, what the "
                                   "compiled extension contains, and the GPUs torch sees.")
    i.set_defaults(func=_cmd_info)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:           # --help, --version, usage errors: argparse's own codes
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def _cmd_info(args) -> int:
    from . import info
    return info.main()


# ============================================================================================
# Methods: what turns a noisy (1, C, H, W) tensor into a clean one
# ============================================================================================

@dataclass
class Method:
    name: str                                  # as printed: "bm3d", "nlm", "DnCNN (dncnn_25.pth)"
    uses_sigma: bool                           # takes a noise level (given or estimated)
    channels: Optional[int]                    # the channels a model takes; None: 1 or 3
    run: Callable[[torch.Tensor, float], torch.Tensor]   # (x, sigma in the image's units) -> y
    model: Optional[torch.nn.Module] = None    # a checkpoint's model (tiling needs its facts)
    streams: dict = field(default_factory=dict)  # --stream: a StreamDenoiser per frame size
    memory: dict = field(default_factory=dict)   # (device, channels, dtype) -> tiling.MemoryEstimate


def _classical(name: str) -> Method:
    from . import classic

    # Looked up now, not at import: bm3d lands in classic.py separately from this module.
    fn = getattr(classic, name, None)
    if fn is None:
        raise UsageError(f"--method {name}: fastdenoise.classic.{name} is not available in this version "
                         f"of fastdenoise; use --method {'nlm' if name != 'nlm' else 'bm3d'} or a checkpoint")
    return Method(name, True, None, lambda x, sigma: fn(x, sigma=sigma))


def _first_line(exc: BaseException, limit: int = 240) -> str:
    text = str(exc).strip().splitlines()
    line = text[0].strip() if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _checkpoint(path: str, device: torch.device, dtype: torch.dtype = torch.float32) -> Method:
    from .models import load_official

    if not os.path.exists(path):
        raise UsageError(f"--method: expected bm3d, nlm or the path of a checkpoint, got {path!r} (no such file)")
    if os.path.isdir(path):
        raise UsageError(f"--method {path}: expected a checkpoint file, got a directory")
    try:
        model = load_official(path)
    except CheckpointError as exc:      # not a checkpoint, or one of no architecture fastdenoise builds
        line = _first_line(exc)
        raise UsageError(line if line.startswith(f"{path}: ") else f"{path}: {line}") from None
    # channels_last: the layout the fused kernels and the convolution libraries (oneDNN, cuDNN)
    # prefer; the input follows it (_model_input).
    model = model.to(device=device, dtype=dtype, memory_format=torch.channels_last).eval()
    label = f"{type(model).__name__} ({os.path.basename(path)})"
    method = _checkpoint_method(model, label)
    method.model = model
    return method


def _checkpoint_method(model, label: str) -> Method:
    from .models import MPRNet, MWCNN, Baseline, DnCNN, FFDNet, InvNet, NAFNet, Restormer, RIDNet

    if isinstance(model, FFDNet):
        return Method(label, True, model.in_nc, lambda x, sigma: model(x, float(sigma)))
    if isinstance(model, InvNet):
        def run_invnet(x, sigma):
            # InvNet needs H and W multiples of 2^down_num: pad at the bottom / right, crop back.
            # Its high-frequency resampling is seeded, so a file always gives the same output.
            h, w = x.shape[-2:]
            ph, pw = -h % model.scale, -w % model.scale
            mode = "reflect" if ph < h and pw < w else "replicate"
            xp = F.pad(x, (0, pw, 0, ph), mode=mode) if ph or pw else x
            gen = torch.Generator(device=x.device).manual_seed(0)
            return model.denoise(xp, generator=gen)[..., :h, :w]
        return Method(label, False, model.channel_in, run_invnet)
    if isinstance(model, MWCNN):
        return Method(label, False, model.n_colors, lambda x, sigma: model(x))
    if isinstance(model, DnCNN):
        return Method(label, False, model.in_nc, lambda x, sigma: model(x))
    if isinstance(model, (NAFNet, Baseline)):        # [0, 1] in and out; pads and crops itself
        return Method(label, False, model.img_channel, lambda x, sigma: model(x))
    if isinstance(model, (RIDNet, MPRNet)):          # their denoise(): [0, 1] in and out
        return Method(label, False, getattr(model, "in_c", 3), lambda x, sigma: model.denoise(x))
    if isinstance(model, Restormer):                 # its denoise(): [0, 1] in and out; pads and crops itself
        return Method(label, False, model.inp_channels, lambda x, sigma: model.denoise(x))
    raise UsageError(f"{label}: loaded as {type(model).__name__}, which the command line does not run")


# ============================================================================================
# Jobs: which file goes where
# ============================================================================================

@dataclass
class Job:
    input: Path
    output: Optional[Path] = None
    reference: Optional[Path] = None
    error: Optional[str] = None                # set when the job fails before it starts


@dataclass
class Result:
    job: Job
    status: str                                # "denoised" | "skipped" | "failed"
    sigma255: Optional[float] = None
    seconds: float = 0.0
    psnr: Optional[float] = None
    ssim: Optional[float] = None
    notes: List[str] = field(default_factory=list)


def _is_image_name(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS


def _collect_jobs(args) -> List[Job]:
    """The input files, their outputs and references; usage errors raise UsageError, problems
    with single inputs become failed jobs."""
    single = len(args.inputs) == 1 and not os.path.isdir(args.inputs[0])
    out = args.output
    out_is_dir = not single or os.path.isdir(out) or out.endswith(("/", os.sep))
    out_path = Path(out)
    if out_is_dir:
        if out_path.exists() and not out_path.is_dir():
            raise UsageError(f"-o {out}: several inputs need an output directory, and this is an existing file")
        if not out_path.exists() and _is_image_name(out_path) and not out.endswith(("/", os.sep)):
            raise UsageError(f"-o {out}: several inputs need an output directory, got an image file name "
                             "(end it with '/' to make a directory of that name)")
    elif not _is_image_name(out_path):
        raise UsageError(f"-o {out}: expected an output file ending in {' '.join(IMAGE_EXTENSIONS)} "
                         "(or a directory: end it with '/')")

    ref_dir = None
    if args.reference is not None:
        if not os.path.exists(args.reference):
            raise UsageError(f"--reference {args.reference}: no such file or directory")
        ref_dir = os.path.isdir(args.reference)

    jobs: List[Job] = []
    for item in args.inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted((f for f in p.iterdir() if f.is_file() and _is_image_name(f)), key=lambda f: f.name)
            if not files:
                jobs.append(Job(p, error=f"no image files ({' '.join(IMAGE_EXTENSIONS)}) in this directory"))
            jobs.extend(Job(f) for f in files)
        elif not p.exists():
            jobs.append(Job(p, error="no such file"))
        elif not _is_image_name(p):
            jobs.append(Job(p, error=f"unsupported file type {p.suffix or '(no extension)'!r}: expected one of "
                                     f"{' '.join(IMAGE_EXTENSIONS)}"))
        else:
            jobs.append(Job(p))

    taken = {}
    for job in jobs:
        if job.error:
            continue
        job.output = (out_path / job.input.name) if out_is_dir else out_path
        key = os.path.normcase(os.path.abspath(job.output))
        if key in taken:
            job.error = f"its output {job.output} is also the output of {taken[key]}"
            continue
        taken[key] = job.input
        if os.path.normcase(os.path.abspath(job.input)) == key:
            job.error = f"the output {job.output} would replace the input itself"
            continue
        if ref_dir is True:
            job.reference = Path(args.reference) / job.input.name
        elif ref_dir is False:
            job.reference = Path(args.reference)
    return jobs


# ============================================================================================
# Progress bar and printing
# ============================================================================================

class Progress:
    """A one-line progress bar on a terminal stream, redrawn in place; off when not enabled."""

    def __init__(self, total: int, stream: TextIO, enabled: bool):
        self.total, self.stream, self.enabled = total, stream, enabled
        self.shown = False

    def show(self, done: int, label: str) -> None:
        if not self.enabled:
            return
        width = shutil.get_terminal_size((80, 20)).columns
        bar_w = max(10, min(30, width // 3))
        filled = bar_w * done // max(self.total, 1)
        text = f"[{'#' * filled}{'.' * (bar_w - filled)}] {done}/{self.total} {label}"
        self.stream.write("\r" + text[:width - 1] + "\x1b[K")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.enabled and self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


def _fmt_sigma(r: Result) -> str:
    return "-" if r.sigma255 is None else f"{r.sigma255:.2f}"


# ============================================================================================
# One file
# ============================================================================================

def _read_reason(exc: BaseException) -> str:
    """One line saying why an image file could not be read."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, FastDenoiseError):
        return _first_line(exc)
    try:
        from PIL import UnidentifiedImageError
        if isinstance(exc, UnidentifiedImageError):
            return "not an image file fastdenoise can read (unknown format or corrupt)"
    except ImportError:  # pragma: no cover
        pass
    return f"corrupt or unsupported image ({_first_line(exc)})"


def _load(path: Path, what: str = "") -> np.ndarray:
    try:
        return read_pixels(path)
    except Exception as exc:            # whatever a corrupt file makes Pillow or our codecs raise
        raise FileError(f"{what}{_read_reason(exc)}") from None


def _write_atomic(path: Path, pixels: np.ndarray) -> None:
    """Write through a temporary file in the same directory, renamed over ``path`` at the end:
    an interrupted or failed write never leaves half a file, nor destroys an old output."""
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        write_image(tmp, pixels)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _denoise_file(job: Job, method: Method, args, device: torch.device) -> Result:
    result = Result(job, "failed")
    pixels = _load(job.input)
    bits = 8 * pixels.dtype.itemsize
    h, w, c = pixels.shape
    reference = None
    if job.reference is not None:
        reference = _load(job.reference, f"reference {job.reference}: ")
        if reference.shape != pixels.shape:
            raise FileError(f"reference {job.reference} is {_describe(reference)}, the image is {_describe(pixels)}")
    if method.channels is not None and method.channels != c:
        raise FileError(f"{method.name} takes {_kind(method.channels)} images, this image is {_kind(c)}")

    start = time.perf_counter()
    x = to_float(pixels, as_tensor=True).to(device)
    with torch.inference_mode():
        sigma = None
        if method.uses_sigma:
            if args.sigma is not None:
                sigma = args.sigma / 255.0
            else:
                sigma = _estimate(x)
        y = _apply(method, _model_input(method, x), sigma, args, result)
        y = y.float().clamp_(0, 1).cpu()
    result.seconds = time.perf_counter() - start
    result.sigma255 = None if sigma is None else sigma * 255.0

    out_bits = bits if job.output.suffix.lower() in SIXTEEN_BIT_EXTENSIONS else 8
    if out_bits < bits:
        result.notes.append("written as 8-bit JPEG")
    written = quantize(y[0].permute(1, 2, 0).numpy(), out_bits)
    job.output.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(job.output, written)

    if reference is not None:
        if job.output.suffix.lower() not in SIXTEEN_BIT_EXTENSIONS:
            written = read_pixels(job.output)          # JPEG is lossy: measure what was written
        result.psnr, result.ssim = _metrics(written, reference)
    result.status = "denoised"
    return result


def _model_input(method: Method, x: torch.Tensor) -> torch.Tensor:
    """A checkpoint's input in its model's dtype and memory format (classical methods: as it is)."""
    if method.model is None:
        return x
    dtype = next(method.model.parameters()).dtype
    return x.to(dtype).contiguous(memory_format=torch.channels_last)


#: tile size when the untiled run of an image fails for want of memory
AUTO_TILE = 1024
#: side of the image a checkpoint's memory per pixel is measured on; images of up to twice its
#: area are run untiled without measuring
MEMORY_PROBE = 256


def _overlap_for(method: Method, args, tile: int) -> int:
    """--overlap, or the model's default, capped to what ``tile`` holds (tiles the command line
    chose; a --tile too small for --overlap is refused in _cmd_denoise)."""
    from .tiling import default_overlap, max_overlap, model_multiple

    overlap = args.overlap if args.overlap is not None else default_overlap(method.model, tile)
    return min(overlap, tile - 1, max_overlap(tile, model_multiple(method.model)))


def _fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def _is_host_oom(exc: BaseException) -> bool:
    """An allocation the host could not satisfy (PyTorch's CPU allocator, or Python's)."""
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError)
                                            and "can't allocate memory" in str(exc))


def _planned_tile(method: Method, x: torch.Tensor, sigma, args, result) -> Optional[int]:
    """A tile size when the checkpoint's untiled run on ``x`` would not fit in the memory
    available on x's device (measured per pixel on a MEMORY_PROBE-sized image, once per device,
    channel count and dtype), else None. On the CPU the host would swap or the kernel kill the
    process instead of PyTorch raising an error; on a GPU the untiled run would fail after
    filling the device (the out-of-memory retry in _apply stays for what the plan misses)."""
    from .tiling import (MEMORY_HEADROOM, available_memory, default_batch, estimate_memory, model_multiple,
                         plan_tile, tiled_bytes)

    b, c, h, w = x.shape
    if x.device.type not in ("cpu", "cuda") or h * w <= 2 * MEMORY_PROBE * MEMORY_PROBE:
        return None
    multiple = model_multiple(method.model)
    key = (str(x.device), c, x.dtype)
    if key not in method.memory:
        method.memory[key] = estimate_memory(lambda t: method.run(t, sigma), c, x.dtype, x.device,
                                             multiple=multiple, size=MEMORY_PROBE)
    estimate = method.memory[key]
    budget = available_memory(x.device)                  # after the probe, which warms caches up
    if budget is None:
        return None
    batch = default_batch(x.device)
    tile, need = plan_tile(estimate, x.shape, budget, multiple=multiple, batch=batch,
                           overlap=lambda t: _overlap_for(method, args, t))
    if tile is not None:
        tiled_need = tiled_bytes(estimate, b, h, w, tile, _overlap_for(method, args, tile), multiple, batch)
        short = " (still more than that: smaller tiles would mostly recompute their overlaps)" \
            if tiled_need > MEMORY_HEADROOM * budget else ""
        where = "host" if x.device.type == "cpu" else "GPU"
        result.notes.append(f"untiled it needs about {_fmt_bytes(need)}, {_fmt_bytes(budget)} of {where} memory "
                            f"is available: tiled {tile}x{tile}{short}")
    return tile


def _apply(method: Method, x: torch.Tensor, sigma, args, result) -> torch.Tensor:
    """method.run(x, sigma), tiled with --tile, tiled when the image would not fit in the memory
    of its device, or tiled automatically after an out-of-memory error."""
    if method.model is None:
        return method.run(x, sigma)
    from .tiling import model_multiple, tiled

    def tiled_run(tile: int) -> torch.Tensor:
        fn = tiled(lambda t: method.run(t, sigma), tile=tile, overlap=_overlap_for(method, args, tile),
                   blend=args.blend, multiple=model_multiple(method.model),
                   progress=not args.no_progress and sys.stderr.isatty())
        return fn(x)

    if getattr(args, "tile", None):
        return tiled_run(args.tile)
    if getattr(args, "stream", False):
        from .stream import StreamDenoiser

        key = tuple(x.shape[1:])
        if key not in method.streams:
            c, h, w = key
            method.streams[key] = StreamDenoiser(lambda t: method.run(t, None), (h, w, c), x.dtype,
                                                 device=x.device)
        return method.streams[key](x[0])[None]
    tile = _planned_tile(method, x, sigma, args, result)
    if tile is not None:
        return tiled_run(tile)
    try:
        return method.run(x, sigma)
    except torch.cuda.OutOfMemoryError:
        if x.device.type != "cuda":
            raise
        torch.cuda.empty_cache()
        result.notes.append(f"out of GPU memory untiled: tiled {AUTO_TILE}x{AUTO_TILE}")
        return tiled_run(AUTO_TILE)
    except (RuntimeError, MemoryError) as exc:
        if x.device.type != "cpu" or not _is_host_oom(exc):
            raise
        result.notes.append(f"out of host memory untiled: tiled {AUTO_TILE}x{AUTO_TILE}")
        return tiled_run(AUTO_TILE)


def _estimate(x: torch.Tensor) -> float:
    from . import classic

    h, w = x.shape[-2:]
    if min(h, w) < 32:
        raise FileError(f"the image is {w}x{h}: too small to estimate the noise level (at least 32x32 "
                        "is needed); give it with --sigma")
    sigma = float(classic.estimate_sigma(x)[0])
    if not sigma > 1e-4:               # about 0.03 on the 0-255 scale: a noise-free image
        raise FileError(f"the estimated noise level is {sigma * 255:.3g} on the 0-255 scale (no noise "
                        "found); give it with --sigma")
    return sigma


def _metrics(written: np.ndarray, reference: np.ndarray):
    """PSNR (dB) and SSIM of the output as written against the reference, both in [0, 1]."""
    from .metrics import psnr, ssim

    a = to_float(written, as_tensor=True)
    b = to_float(reference, as_tensor=True)
    p = float(psnr(a, b, data_range=1.0)[0])
    s = float(ssim(a, b, data_range=1.0)[0]) if min(a.shape[-2:]) >= _SSIM_MIN_SIZE else None
    return p, s


def _kind(c: int) -> str:
    return {1: "grey (1-channel)", 3: "colour (3-channel)"}.get(c, f"{c}-channel")


def _describe(pixels: np.ndarray) -> str:
    h, w, c = pixels.shape
    return f"{w}x{h} {'grey' if c == 1 else 'colour'}"


# ============================================================================================
# The command
# ============================================================================================

def _pick_device(name: Optional[str]) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: torch sees no CUDA device here (a CPU build of torch, or no GPU); "
                         "use --device cpu")
    return torch.device(name)


def _cmd_denoise(args) -> int:
    t0 = time.perf_counter()
    out, err = sys.stdout, sys.stderr
    try:
        _pil()
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    device = _pick_device(args.device)
    jobs = _collect_jobs(args)
    if args.method.lower() in CLASSICAL_METHODS:
        if args.dtype != "float32":
            raise UsageError(f"--dtype {args.dtype}: {args.method.lower()} runs in float32 only; --dtype sets "
                             "the precision of a checkpoint's model")
        method = _classical(args.method.lower())
    else:
        method = _checkpoint(args.method, device, DTYPES[args.dtype])
    if args.sigma is not None and not method.uses_sigma:
        print(f"note: --sigma is not used by {method.name} (a blind model)", file=err)
    if method.model is None and (args.tile is not None or args.overlap is not None):
        raise UsageError(f"--tile / --overlap: tiling runs a checkpoint's model; {method.name} works on the "
                         "whole image")
    if args.stream and (method.model is None or method.uses_sigma or args.tile is not None
                        or type(method.model).__name__ == "InvNet"):
        raise UsageError(f"--stream: runs a blind checkpoint's model whole on each frame (not {method.name}"
                         f"{', not with --tile' if args.tile is not None else ''}; InvDN draws noise per frame)")
    if args.tile is not None and args.overlap is not None and args.overlap >= args.tile:
        raise UsageError(f"--overlap: expected less than --tile={args.tile}, got {args.overlap}")
    if args.tile is not None and args.overlap is not None and method.model is not None:
        from .tiling import max_overlap, model_multiple

        m = model_multiple(method.model)
        if args.overlap > max_overlap(args.tile, m):
            raise UsageError(f"--overlap: expected at most {max_overlap(args.tile, m)} with --tile={args.tile} "
                             f"({method.name} works on multiples of {m} pixels: the tile is rounded up to one and "
                             f"moves in steps of at least {m}), got {args.overlap}")

    progress = Progress(len(jobs), err, len(jobs) > 1 and not args.no_progress and err.isatty())
    results: List[Result] = []
    for n, job in enumerate(jobs):
        progress.show(n, job.input.name)
        result = _run_job(job, method, args, device)
        results.append(result)
        progress.clear()
        _report(result, out, err)
    progress.clear()

    _summary(results, method, device, time.perf_counter() - t0, args, out)
    return 1 if any(r.status == "failed" for r in results) else 0


def _run_job(job: Job, method: Method, args, device: torch.device) -> Result:
    if job.error:
        return Result(job, "failed", notes=[job.error])
    if job.output.exists() and not args.overwrite:
        return Result(job, "skipped", notes=[f"{job.output} exists (--overwrite replaces it)"])
    try:
        return _denoise_file(job, method, args, device)
    except FileError as exc:
        return Result(job, "failed", notes=[str(exc)])
    except (OSError, RuntimeError, FastDenoiseError, MemoryError) as exc:
        # Writing (disk full, permissions), the device (out of memory), a model's input checks.
        if args.debug:
            traceback.print_exc()
        return Result(job, "failed", notes=[_first_line(exc) or type(exc).__name__])
    except Exception as exc:            # a bug: still one line per file unless --debug
        if args.debug:
            traceback.print_exc()
        return Result(job, "failed", notes=[f"internal error ({type(exc).__name__}: {_first_line(exc)}); "
                                            "run with --debug for the traceback"])


def _report(r: Result, out: TextIO, err: TextIO) -> None:
    name = str(r.job.input)
    if r.status == "failed":
        print(f"error: {name}: {r.notes[0]}", file=err)
        return
    if r.status == "skipped":
        print(f"skipped: {name}: {r.notes[0]}", file=err)
        return
    parts = [f"{name} -> {r.job.output}", f"sigma {_fmt_sigma(r)}", f"{r.seconds:.2f} s"]
    if r.psnr is not None:
        parts.append(f"PSNR {r.psnr:.2f} dB")
        parts.append("SSIM n/a (smaller than 11x11)" if r.ssim is None else f"SSIM {r.ssim:.4f}")
    parts += r.notes
    print("  ".join(parts), file=out, flush=True)


def _summary(results: List[Result], method: Method, device: torch.device, seconds: float, args,
             out: TextIO) -> None:
    done = [r for r in results if r.status == "denoised"]
    skipped = [r for r in results if r.status == "skipped"]
    failed = [r for r in results if r.status == "failed"]
    print(f"{len(done)} denoised, {len(skipped)} skipped, {len(failed)} failed "
          f"({len(results)} file{'s' if len(results) != 1 else ''}) in {seconds:.2f} s; "
          f"method {method.name} on {device.type}", file=out)
    if done:
        if not method.uses_sigma:
            print(f"sigma: not used ({method.name} is a blind model)", file=out)
        elif args.sigma is not None:
            print(f"sigma (0-255 scale): {args.sigma:g} for every file (--sigma)", file=out)
        else:
            listed = ", ".join(f"{r.job.input.name} {_fmt_sigma(r)}" for r in done)
            print(f"sigma (0-255 scale, estimated): {listed}", file=out)
        scored = [r for r in done if r.psnr is not None]
        if len(scored) > 1:
            line = f"mean PSNR {sum(r.psnr for r in scored) / len(scored):.2f} dB"
            with_ssim = [r.ssim for r in scored if r.ssim is not None]
            if with_ssim:
                line += f", mean SSIM {sum(with_ssim) / len(with_ssim):.4f}"
            print(f"{line} over {len(scored)} files", file=out)
    if skipped:
        print("skipped (output exists; --overwrite replaces it): "
              + ", ".join(str(r.job.input) for r in skipped), file=out)
    if failed:
        print("failed: " + ", ".join(str(r.job.input) for r in failed), file=out)
