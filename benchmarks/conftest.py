"""Benchmark fixtures: device choice, a synchronising timer, run metadata, bytes and peak memory.

Run from the repository root::

    python -m pytest benchmarks                                    # GPU if there is one, else CPU
    python -m pytest benchmarks --bench-device cpu                 # force the device
    python -m pytest benchmarks --benchmark-json out.json          # then: python benchmarks/report.py out.json
    python -m pytest benchmarks --benchmark-disable -q             # smoke: each benchmark body runs once

Every benchmark goes through the ``bench`` fixture (a wrapper around pytest-benchmark's
``benchmark.pedantic``): warm-up rounds are run first and left out of the statistics, and on CUDA
the device is synchronised before each timed call and inside it, after the work (so a round's
time is launch + execution, nothing queued from before). It stores in ``benchmark.extra_info``:
the contender, bytes moved (read + write) and FLOPs when the benchmark says, peak CUDA memory
(``torch.cuda.max_memory_allocated`` after a reset, around one untimed call), and the device's
measured copy bandwidth, so ``report.py`` can give achieved GB/s and its share of the copy
bandwidth. Run metadata (device, GPU, torch / triton / CUDA / cuDNN versions,
``fastdenoise.build_info()``, git commit, date, copy bandwidth) goes into the JSON's
``machine_info["fastdenoise"]`` and, in short, into each benchmark's ``extra_info``.

DRAM traffic: ``--bench-ncu-log PATH``, for a run under ``ncu --profile-from-start off`` (the
``ncu`` stage of ``scripts/gpu_check.sh``), runs each op contender once more inside a profiled
range opened by a marker kernel and logs it to PATH; ``benchmarks/ncu_report.py`` pairs the log
with ncu's kernels and compares the bytes moved with the op's minimum.

``torch.compile`` (the ``compiled`` contenders): ``--bench-compile auto|yes|no``. ``auto`` (the
default) compiles everything, except on CPU with ``--benchmark-disable`` (the CI smoke run on a
small CPU), where compiling the *models* takes minutes on two cores: those compiled contenders are
skipped there, and the Haar ones (a few seconds each) still run once.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import pathlib
import platform
import subprocess
import time
import zlib
from typing import Callable, Optional

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]

#: cycles of the marker kernel that opens each profiled call under ``--bench-ncu-log``
NCU_MARKER_CYCLES = 1000

# Per-kind benchmark settings: (rounds, warm-up rounds). ``--bench-rounds`` overrides the rounds.
ROUNDS = {
    ("cuda", "op"): (25, 5),
    ("cuda", "model"): (5, 2),
    ("cpu", "op"): (10, 2),
    ("cpu", "model"): (3, 1),
}


# ---------------------------------------------------------------------------------------------
# Options and device
# ---------------------------------------------------------------------------------------------

def pytest_addoption(parser):
    group = parser.getgroup("fastdenoise benchmarks")
    group.addoption("--bench-device", choices=("cuda", "cpu"), default=None,
                    help="device to benchmark on (default: cuda when available, else cpu)")
    group.addoption("--bench-compile", choices=("auto", "yes", "no"), default="auto",
                    help="run the torch.compile contenders: yes, no, or auto (all, except the "
                         "model ones on CPU with --benchmark-disable)")
    group.addoption("--bench-rounds", type=int, default=None,
                    help="timed rounds per benchmark (default: per device and kind, see conftest.ROUNDS)")
    group.addoption("--bench-ncu-log", default=None, metavar="PATH",
                    help="for a run under `ncu --profile-from-start off` (CUDA only): after each op "
                         "benchmark's warm call, run the contender once more between "
                         "cudaProfilerStart/Stop, behind a marker kernel, and append a JSON line "
                         "(group, contender, bytes_moved) to PATH; benchmarks/ncu_report.py pairs "
                         "the lines with ncu's kernels")


def bench_device(config) -> torch.device:
    """The device the benchmarks run on (usable at collection time, e.g. in pytest_generate_tests)."""
    name = config.getoption("--bench-device")
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def benchmarks_disabled(config) -> bool:
    return bool(config.getoption("benchmark_disable", False))


def compile_enabled(config, kind: str) -> bool:
    """Whether the ``compiled`` contender of a ``kind`` ("op" | "model") benchmark runs."""
    choice = config.getoption("--bench-compile")
    if choice != "auto":
        return choice == "yes"
    if bench_device(config).type == "cpu" and benchmarks_disabled(config):
        return kind == "op"
    return True


def pytest_configure(config):
    if config.getoption("--bench-device") == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--bench-device cuda: torch sees no CUDA device "
                                f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")
    if config.getoption("--bench-ncu-log") and bench_device(config).type != "cuda":
        raise pytest.UsageError("--bench-ncu-log: the profiled calls need the CUDA device, but the "
                                f"benchmarks run on {bench_device(config).type} "
                                f"(torch.cuda.is_available() = {torch.cuda.is_available()})")


def fresh_compile(fn, **kwargs):
    """``torch.compile(fn, dynamic=False, **kwargs)`` with Dynamo's caches emptied first.

    Every case compiles its own function: resetting keeps one cache entry per code object (no
    guard walk over earlier cases in the timed calls), and the raised recompile limits with
    ``fail_on_*_limit_hit`` make sure a long run never falls back to eager silently.
    """
    import torch._dynamo

    dyn = torch._dynamo.config
    for name, value in (("recompile_limit", 4096), ("cache_size_limit", 4096),
                        ("accumulated_recompile_limit", 1 << 16),
                        ("accumulated_cache_size_limit", 1 << 16)):
        if hasattr(dyn, name):
            setattr(dyn, name, value)
    for name in ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit"):
        if hasattr(dyn, name):
            setattr(dyn, name, True)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    return torch.compile(fn, dynamic=False, **kwargs)


@pytest.fixture(scope="session")
def device(pytestconfig) -> torch.device:
    return bench_device(pytestconfig)


@pytest.fixture(autouse=True)
def _seed(request):
    """Fresh but reproducible random inputs, seeded from the test's name."""
    seed = zlib.crc32(request.node.nodeid.encode()) & 0x7FFFFFFF
    torch.manual_seed(seed)
    return seed


def make_generator(device: torch.device, key: str) -> torch.Generator:
    """A generator seeded from ``key``: the contenders of one group draw the same input from it."""
    g = torch.Generator(device=device)
    g.manual_seed(zlib.crc32(key.encode()) & 0x7FFFFFFF)
    return g


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# Run metadata
# ---------------------------------------------------------------------------------------------

def _git(*args) -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


@functools.lru_cache(maxsize=None)
def run_metadata(device_type: str) -> dict:
    """Versions, device and source revision of this run (computed once per process)."""
    import fastdenoise

    meta = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_type,
        "host": platform.node(),
        "cpu": _cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "fastdenoise": fastdenoise.__version__,
        "build_info": fastdenoise.build_info(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None,
        "FASTDENOISE_BACKEND": os.environ.get("FASTDENOISE_BACKEND"),
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
    }
    status = _git("status", "--porcelain", "--untracked-files=no")
    if status is not None:
        meta["git_dirty"] = bool(status)
    try:
        import triton
        meta["triton"] = triton.__version__
    except Exception:  # not installed, or broken: say so, don't fail the run
        meta["triton"] = None
    if device_type == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        meta.update({
            "gpu": props.name,
            "gpu_capability": f"{props.major}.{props.minor}",
            "gpu_sms": props.multi_processor_count,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "cuda_driver": _cuda_driver_version(),
        })
    return meta


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cuda_driver_version() -> Optional[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True)
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


# ---------------------------------------------------------------------------------------------
# Copy bandwidth: the ceiling a memory-bound op is compared with
# ---------------------------------------------------------------------------------------------

_COPY_BW: dict = {}


def measure_copy_bandwidth(device: torch.device) -> dict:
    """Time ``dst.copy_(src)`` of a large buffer; GB/s counts bytes read + bytes written.

    CUDA: 1 GiB buffers, 3 warm-ups, median of 10 CUDA-event timings. CPU: 64 MiB buffers,
    1 warm-up, median of 5 (cheap: well under a second).
    """
    if device.type == "cuda":
        nbytes, warm, reps = 1 << 30, 3, 10
    else:
        nbytes, warm, reps = 64 << 20, 1, 5
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    for _ in range(warm):
        dst.copy_(src)
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    del src, dst
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"copy_bytes": 2 * nbytes, "copy_seconds": median,
            "copy_gbps": 2 * nbytes / median / 1e9, "copy_method": "dst.copy_(src), read+write"}


@pytest.fixture(scope="session")
def copy_bandwidth(device) -> dict:
    """The device's measured copy bandwidth (measured once per session)."""
    key = str(device)
    if key not in _COPY_BW:
        _COPY_BW[key] = measure_copy_bandwidth(device)
    return _COPY_BW[key]


def pytest_benchmark_update_machine_info(config, machine_info):
    dev = bench_device(config)
    info = dict(run_metadata(dev.type))
    bw = _COPY_BW.get(str(dev))
    if bw is not None:
        info.update(bw)
    machine_info["fastdenoise"] = info


# ---------------------------------------------------------------------------------------------
# The bench fixture
# ---------------------------------------------------------------------------------------------

class Bench:
    """Times one contender: ``bench(fn, group=..., contender=..., bytes_moved=..., kind="op")``.

    ``fn`` takes no arguments and does the whole timed work (it may return its output, which is
    dropped). Returns fn's last result (or None when benchmarks are disabled and ``fn`` returned
    nothing).
    """

    def __init__(self, benchmark, device: torch.device, copy_bw: dict, config):
        self.benchmark = benchmark
        self.device = device
        self.copy_bw = copy_bw
        self.config = config

    @property
    def enabled(self) -> bool:
        return not self.benchmark.disabled

    def __call__(self, fn: Callable[[], object], *, group: str, contender: str,
                 kind: str = "op", bytes_moved: Optional[int] = None, flops: Optional[float] = None,
                 rounds: Optional[int] = None, warmup_rounds: Optional[int] = None,
                 extra: Optional[dict] = None):
        b = self.benchmark
        dev = self.device
        default_rounds, default_warmup = ROUNDS[(dev.type, kind)]
        rounds = rounds or self.config.getoption("--bench-rounds") or default_rounds
        warmup_rounds = default_warmup if warmup_rounds is None else warmup_rounds

        b.group = group
        meta = run_metadata(dev.type)
        b.extra_info.update({
            "contender": contender,
            "kind": kind,
            "device": meta.get("gpu") or f"cpu ({meta['cpu']}, {meta['cpu_threads']} threads)",
            "torch": meta["torch"],
            "triton": meta["triton"],
            "cuda": meta["torch_cuda"],
            "git_commit": meta["git_commit"],
            "date": meta["date"],
            "timing": ("cuda-synchronized perf_counter" if dev.type == "cuda" else "perf_counter")
                      + f", {warmup_rounds} warm-up rounds excluded",
        })
        if bytes_moved is not None:
            b.extra_info["bytes_moved"] = int(bytes_moved)
        if flops is not None:
            b.extra_info["flops"] = float(flops)
        b.extra_info.update(self.copy_bw)
        if extra:
            b.extra_info.update(extra)

        if self.enabled and dev.type == "cuda":
            b.extra_info.update(self.peak_memory(fn))
        ncu_log = self.config.getoption("--bench-ncu-log")
        if ncu_log and kind == "op":
            self.ncu_profiled_call(fn, ncu_log, group=group, contender=contender, bytes_moved=bytes_moved)

        if dev.type == "cuda":
            def target():
                out = fn()
                torch.cuda.synchronize(dev)
                return out

            def setup():
                torch.cuda.synchronize(dev)
        else:
            target, setup = fn, None
        return b.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=warmup_rounds)

    def ncu_profiled_call(self, fn, path: str, **record) -> None:
        """One call of ``fn`` for Nsight Compute to measure, and a line in ``path`` naming it.

        A warm call first (Triton compilation, autotuning and first-touch allocations happen
        there, outside the profiled range); then, between ``cudaProfilerStart`` and
        ``cudaProfilerStop``, the marker kernel (``torch.cuda._sleep``: ATen's ``spin_kernel``)
        and the call. Under ``ncu --profile-from-start off`` only those kernels are profiled, in
        launch order, so the k-th marker opens the kernels of the k-th line of ``path``.
        """
        dev = self.device
        out = fn()
        del out
        torch.cuda.synchronize(dev)
        meta = run_metadata(dev.type)
        record.update({
            "test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0],
            "meta": {k: meta.get(k) for k in ("gpu", "gpu_capability", "cuda_driver", "torch", "torch_cuda",
                                             "triton", "python", "git_commit", "git_dirty", "date")},
        })
        marked = False
        torch.cuda.profiler.start()
        try:
            torch.cuda._sleep(NCU_MARKER_CYCLES)
            marked = True
            out = fn()
            torch.cuda.synchronize(dev)
            del out
        except BaseException as e:
            # The marker is in the profile: its line must be too, or every later call would be
            # paired with the wrong kernels.
            if marked:
                record["error"] = f"{type(e).__name__}: {e}"[:300]
                self._append_line(path, record)
            raise
        finally:
            torch.cuda.profiler.stop()
        self._append_line(path, record)

    @staticmethod
    def _append_line(path: str, record: dict) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def peak_memory(self, fn) -> dict:
        """Peak CUDA memory of one call: absolute, and above what was allocated before it."""
        dev = self.device
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        out = fn()
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev)
        del out
        return {"peak_memory_bytes": int(peak), "peak_extra_bytes": int(peak - before)}


@pytest.fixture
def bench(benchmark, device, copy_bandwidth, pytestconfig) -> Bench:
    return Bench(benchmark, device, copy_bandwidth, pytestconfig)
