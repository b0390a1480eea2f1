"""Build the CPU emulation of the CUDA kernels (csrc/tests/cuda_emu/fd_cuda_emu.h says what it is).

Every ``csrc/cuda/kernels/*.cu`` (and the emulator's own ``selftest.cu``) is rewritten into C++
(launch syntax and dynamic shared memory only; a ``#line`` directive keeps compiler and ASan
messages on the original file and line), compiled by the host C++ compiler with the emulator's
stand-ins for the CUDA headers, and linked with the emulator and the C entry points of
``exports.cpp`` into one shared library, cached under ``build/cuda_emu/<hash of every input>/``.

    python tests/cuda_emu/build.py      # builds (or finds) the library and prints its path
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ROOT / "csrc" / "cuda" / "kernels"
EMU = ROOT / "csrc" / "tests" / "cuda_emu"
FLAGS = ["-std=c++20", "-O1", "-g", "-fPIC", "-ffp-contract=off", "-fno-fast-math", "-Wall",
         "-Wno-unknown-pragmas", "-Werror=return-type"]

# kernel<T, N><<<grid, block, shared, stream>>>(  ->  ::fd_emu::launch(kernel<T, N>, grid, ...)(
_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^;{}<>]*>)?)\s*<<<(.*?)>>>\s*\(", re.S)
# extern __shared__ [__align__(n)] T name[];  ->  T* name = ::fd_emu::dynamic_shared<T>();
_DYN_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([A-Za-z_][\w:\s]*?)\s+(\w+)\s*\[\s*\]\s*;")


def translate(source: str, name: str) -> str:
    """The C++ text of one .cu file for the emulator."""
    text, n_launch = _LAUNCH.subn(lambda m: f"::fd_emu::launch({m.group(1)}, {m.group(2)})(", source)
    text = _DYN_SHARED.sub(lambda m: f"{m.group(1)}* {m.group(2)} = ::fd_emu::dynamic_shared<{m.group(1)}>();", text)
    if "<<<" in text or re.search(r"extern\s+__shared__", text):
        raise RuntimeError(f"{name}: a launch or an extern __shared__ declaration the emulator build cannot rewrite")
    if n_launch == 0 and "__global__" in text:
        raise RuntimeError(f"{name}: defines kernels but no launch was found")
    return f'#line 1 "{name}"\n' + text


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise RuntimeError("no C++ compiler found (set CXX): the CUDA emulator cannot be built")
    return cxx


def _inputs() -> list[Path]:
    files = sorted(KERNELS.glob("*.cu")) + sorted(KERNELS.glob("*.cuh"))
    files += sorted(EMU.glob("*")) + sorted((ROOT / "csrc" / "include" / "fastdenoise").glob("*.h"))
    return files + [Path(__file__)]


def library_path(sanitize: bool | None = None) -> Path:
    """Builds the emulator library if needed; returns its path. ``sanitize`` (default: the
    environment variable FASTDENOISE_EMU_ASAN=1) builds it with AddressSanitizer: every global
    and shared memory access of the kernels is then bounds-checked. The process must load ASan's
    runtime first (``LD_PRELOAD=$(g++ -print-file-name=libasan.so)``, ``ASAN_OPTIONS=detect_leaks=0``)."""
    if sanitize is None:
        sanitize = os.environ.get("FASTDENOISE_EMU_ASAN") == "1"
    flags = FLAGS + (["-fsanitize=address", "-fno-omit-frame-pointer"] if sanitize else [])
    cxx = _compiler()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
    h = hashlib.sha256(version.encode() + " ".join(flags).encode())
    for f in _inputs():
        h.update(f.name.encode())
        h.update(f.read_bytes())
    out = ROOT / "build" / "cuda_emu" / h.hexdigest()[:16]
    lib = out / "libfd_cuda_emu.so"
    if lib.exists():
        return lib
    src = out / "src"
    src.mkdir(parents=True, exist_ok=True)
    units = []
    for cu in sorted(KERNELS.glob("*.cu")) + sorted(EMU.glob("*.cu")):
        rel = cu.relative_to(ROOT).as_posix()
        dst = src / (cu.stem + "_emu.cpp")
        dst.write_text(translate(cu.read_text(), rel))
        units.append(dst)
    units += [EMU / "fd_cuda_emu.cpp", EMU / "exports.cpp"]
    inc = [f"-I{EMU}", f"-I{KERNELS}", f"-I{ROOT / 'csrc' / 'include'}"]

    def compile_one(unit: Path) -> Path:
        obj = out / (unit.stem + ".o")
        cmd = [cxx, *flags, *inc, "-c", str(unit), "-o", str(obj)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"compiling {unit.name} for the CUDA emulator failed:\n{' '.join(cmd)}\n{r.stderr}")
        return obj

    with ThreadPoolExecutor(max_workers=max(1, min(len(units), os.cpu_count() or 1))) as pool:
        objs = list(pool.map(compile_one, units))
    tmp = out / f"libfd_cuda_emu.{os.getpid()}.so"
    r = subprocess.run([cxx, "-shared", *flags, *map(str, objs), "-o", str(tmp)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"linking the CUDA emulator failed:\n{r.stderr}")
    tmp.replace(lib)  # atomic: a concurrent build never sees half a library
    return lib


if __name__ == "__main__":
    print(library_path())
    sys.exit(0)
