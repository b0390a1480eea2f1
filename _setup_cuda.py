"""Can the CUDA sources be built here? setup.py's check, before anything is compiled.

torch's own checks come late (in the middle of the build) or not at all: a CUDA_HOME guessed
from an ``nvcc`` wrapper script on PATH (``/usr/local/bin/nvcc`` -> CUDA_HOME ``/usr/local``,
which holds no CUDA headers) fails the first ``.cu`` with "cuda_runtime.h: No such file"; a
CUDA runtime without the compiler fails on the missing ``bin/nvcc``; a toolkit of another
major version than torch's stops the build with torch's mismatch error. Here each of these is
found first and named: the build then makes the CPU kernels only (and says why, in the build
log and in ``fastdenoise.build_info()["cuda_skipped"]``), or, with ``FORCE_CUDA=1``, stops
with that reason. Where ``CUDA_HOME`` holds no headers but the ``nvcc`` in it runs from a real
toolkit (the wrapper case), that toolkit is used instead, and the build says so.

Only the standard library: the tests import it without torch's build machinery.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, List, Optional

__all__ = ["CudaPlan", "plan_cuda", "nvcc_release", "nvcc_toolkit_root"]


@dataclass
class CudaPlan:
    """``with_cuda``: build the CUDA sources; ``cuda_home``: the toolkit to build them with;
    ``why``: the reason when not; ``notes``: what was changed on the way (to print)."""

    with_cuda: bool
    cuda_home: Optional[str] = None
    why: Optional[str] = None
    nvcc_version: Optional[str] = None
    notes: List[str] = field(default_factory=list)


Runner = Callable[[List[str]], str]


def _run(cmd: List[str]) -> str:
    """stdout + stderr of ``cmd``; raises OSError / subprocess.SubprocessError when it fails."""
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60,
                         check=True)
    return out.stdout


def _nvcc(cuda_home: str) -> str:
    return os.path.join(cuda_home, "bin", "nvcc.exe" if sys.platform == "win32" else "nvcc")


def _has_headers(root: str) -> bool:
    return os.path.isfile(os.path.join(root, "include", "cuda_runtime.h"))


def nvcc_release(nvcc: str, run: Runner = _run) -> str:
    """The CUDA release ``nvcc --version`` names ("13.0"); ValueError when it names none."""
    try:
        text = run([nvcc, "--version"])
    except (OSError, subprocess.SubprocessError) as e:
        raise ValueError(f"`{nvcc} --version` failed: {e}") from None
    m = re.search(r"release (\d+)\.(\d+)", text)
    if m is None:
        raise ValueError(f"`{nvcc} --version` names no CUDA release: {text.strip()[:200]!r}")
    return f"{m.group(1)}.{m.group(2)}"


def nvcc_toolkit_root(nvcc: str, run: Runner = _run) -> Optional[str]:
    """The toolkit folder ``nvcc`` really runs from (its ``TOP``, from ``nvcc -dryrun``), or None."""
    try:
        text = run([nvcc, "-dryrun", "-E", "-x", "cu", os.devnull])
    except (OSError, subprocess.SubprocessError):
        return None
    for line in text.splitlines():
        m = re.match(r"#\$ TOP=(.+)$", line.strip())
        if m:
            return os.path.realpath(m.group(1).strip())
    return None


def plan_cuda(torch_cuda: Optional[str], cuda_home: Optional[str], run: Runner = _run, *,
              torch_hip: Optional[str] = None) -> CudaPlan:
    """Whether to build the CUDA sources for a torch built with CUDA ``torch_cuda`` (None: a
    CPU-only or ROCm torch; ``torch_hip``: its HIP version if ROCm), with the toolkit torch found
    at ``cuda_home`` (None: none found)."""
    if torch_cuda is None and torch_hip:
        return CudaPlan(False, why=f"torch is a ROCm build (HIP {torch_hip}): the CUDA sources are not "
                                   "compiled for ROCm")
    if torch_cuda is None:
        return CudaPlan(False, why="torch is a CPU-only build")
    if cuda_home is None:
        return CudaPlan(False, why="nvcc / CUDA_HOME not found (set CUDA_HOME to the CUDA toolkit's folder)")
    nvcc = _nvcc(cuda_home)
    if not os.path.isfile(nvcc):
        return CudaPlan(False, why=f"CUDA_HOME={cuda_home} has no {os.path.relpath(nvcc, cuda_home)} "
                                   "(a CUDA runtime without the compiler?); set CUDA_HOME to a CUDA toolkit")
    notes = []
    if not _has_headers(cuda_home):
        root = nvcc_toolkit_root(nvcc, run)
        if root is None or not _has_headers(root) or not os.path.isfile(_nvcc(root)):
            return CudaPlan(False, why=f"CUDA_HOME={cuda_home} has no include/cuda_runtime.h, and its "
                                       f"{os.path.relpath(nvcc, cuda_home)} names no toolkit that has one; "
                                       "set CUDA_HOME to the CUDA toolkit's folder")
        notes.append(f"CUDA_HOME={cuda_home} has no include/cuda_runtime.h; using the toolkit its nvcc "
                     f"runs from, {root}")
        cuda_home, nvcc = root, _nvcc(root)
    try:
        release = nvcc_release(nvcc, run)
    except ValueError as e:
        return CudaPlan(False, why=str(e), notes=notes)
    if release.split(".")[0] != torch_cuda.split(".")[0]:
        return CudaPlan(False, nvcc_version=release, notes=notes,
                        why=f"nvcc at {nvcc} is CUDA {release} but torch was built with CUDA {torch_cuda}: "
                            "the major versions must match (point CUDA_HOME at a CUDA "
                            f"{torch_cuda.split('.')[0]}.x toolkit, or install a torch built for CUDA "
                            f"{release.split('.')[0]})")
    return CudaPlan(True, cuda_home=cuda_home, nvcc_version=release, notes=notes)
