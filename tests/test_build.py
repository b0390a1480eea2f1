"""setup.py says what it builds and refuses FORCE_CUDA=1 where CUDA cannot be built."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO


def _setup(*args, **env):
    return subprocess.run([sys.executable, "setup.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env})


def test_setup_reports_what_it_builds():
    out = _setup("--version", FORCE_CUDA="0", MAX_JOBS="3")
    assert out.returncode == 0, out.stderr
    assert "0.1.0" in out.stdout
    if torch.version.cuda is None:
        assert f"building CPU kernels only (torch is a CPU-only build; torch {torch.__version__})" in out.stderr
    else:
        assert "building CPU + CUDA kernels" in out.stderr or "nvcc / CUDA_HOME not found" in out.stderr
    assert "csrc/fastdenoise.cpp" in out.stderr and "csrc/cpu/haar_cpu.cpp" in out.stderr
    assert "MAX_JOBS=3" in out.stderr


@pytest.mark.skipif(torch.version.cuda is not None, reason="this torch can build the CUDA sources")
def test_force_cuda_without_cuda_torch_is_an_error():
    out = _setup("--version", FORCE_CUDA="1")
    assert out.returncode != 0
    assert "FORCE_CUDA=1 but the CUDA sources cannot be built: torch is a CPU-only build" in out.stderr


def test_cuda_sources_build_when_forced_on_a_cuda_torch():
    if torch.version.cuda is None:
        pytest.skip("needs a CUDA build of torch (run by scripts/gpu_check.sh)")
    out = _setup("--version", FORCE_CUDA="1", TORCH_CUDA_ARCH_LIST="9.0")
    assert out.returncode == 0, out.stderr
    assert "building CPU + CUDA kernels" in out.stderr and "sm_90" in out.stderr
    assert "csrc/cuda/kernels/haar.cu" in out.stderr
