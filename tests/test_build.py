"""setup.py says what it builds and refuses FORCE_CUDA=1 where CUDA cannot be built; its CUDA
check (``_setup_cuda.py``) against toolkits made in the tests (a fake ``nvcc`` per case)."""

from __future__ import annotations

import importlib.util
import os
import stat
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
        # what the toolkit check decides for this machine (tested below on fake toolkits)
        from torch.utils import cpp_extension

        sys.path.insert(0, str(REPO))
        try:
            from _setup_cuda import plan_cuda
        finally:
            sys.path.remove(str(REPO))
        plan = plan_cuda(torch.version.cuda, cpp_extension.CUDA_HOME, torch_hip=getattr(torch.version, "hip", None))
        if plan.with_cuda:
            assert f"building CPU + CUDA kernels (torch {torch.__version__}" in out.stderr
        else:
            assert f"building CPU kernels only ({plan.why}; torch {torch.__version__})" in out.stderr
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


# ---------------------------------------------------------------------------------------------
# _setup_cuda.plan_cuda: the toolkit checks, on fake toolkits
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def setup_cuda():
    spec = importlib.util.spec_from_file_location("fastdenoise_setup_cuda", REPO / "_setup_cuda.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod          # dataclasses look their module up there
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


def _toolkit(root, release="13.0", headers=True, top=None, nvcc=True):
    """A folder with bin/nvcc (a shell script answering --version and -dryrun) and, with
    ``headers``, include/cuda_runtime.h; ``top``: the TOP its -dryrun names (default: itself)."""
    (root / "bin").mkdir(parents=True)
    if headers:
        (root / "include").mkdir()
        (root / "include" / "cuda_runtime.h").write_text("/* fake */\n")
    if nvcc:
        script = root / "bin" / "nvcc"
        script.write_text("#!/bin/sh\n"
                          'case "$1" in\n'
                          f'  --version) echo "Cuda compilation tools, release {release}, V{release}.1" ;;\n'
                          f'  -dryrun) echo "#$ _HERE_={top or root}/bin"; echo "#$ TOP={top or root}/bin/.." ;;\n'
                          "  *) exit 1 ;;\n"
                          "esac\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(root)


needs_sh = pytest.mark.skipif(sys.platform == "win32", reason="the fake nvcc is a shell script")


def test_plan_without_cuda_torch_or_toolkit(setup_cuda):
    p = setup_cuda.plan_cuda(None, "/usr/local/cuda")
    assert not p.with_cuda and p.why == "torch is a CPU-only build"
    p = setup_cuda.plan_cuda("13.0", None)
    assert not p.with_cuda and "nvcc / CUDA_HOME not found" in p.why
    # a ROCm torch has no torch.version.cuda either: not called a CPU-only build
    p = setup_cuda.plan_cuda(None, None, torch_hip="6.4.43482")
    assert not p.with_cuda
    assert p.why == "torch is a ROCm build (HIP 6.4.43482): the CUDA sources are not compiled for ROCm"


@needs_sh
def test_plan_matching_toolkit_builds_cuda(setup_cuda, tmp_path):
    home = _toolkit(tmp_path / "cuda-13.0", "13.0")
    p = setup_cuda.plan_cuda("13.0", home)
    assert p.with_cuda and p.cuda_home == home and p.nvcc_version == "13.0" and p.why is None and not p.notes
    # another minor version: torch only warns, so it builds
    p = setup_cuda.plan_cuda("13.1", home)
    assert p.with_cuda and p.nvcc_version == "13.0"


@needs_sh
def test_plan_major_mismatch_is_named(setup_cuda, tmp_path):
    home = _toolkit(tmp_path / "cuda-12.8", "12.8")
    p = setup_cuda.plan_cuda("13.0", home)
    assert not p.with_cuda and p.nvcc_version == "12.8"
    assert "is CUDA 12.8 but torch was built with CUDA 13.0: the major versions must match" in p.why
    assert os.path.join(home, "bin", "nvcc") in p.why


@needs_sh
def test_plan_runtime_without_nvcc(setup_cuda, tmp_path):
    home = _toolkit(tmp_path / "runtime", nvcc=False)
    p = setup_cuda.plan_cuda("13.0", home)
    assert not p.with_cuda and f"CUDA_HOME={home} has no bin/nvcc" in p.why


@needs_sh
def test_plan_wrapper_nvcc_uses_the_real_toolkit(setup_cuda, tmp_path):
    """CUDA_HOME guessed from a wrapper script (/usr/local/bin/nvcc -> /usr/local): no headers
    there, but nvcc -dryrun names the toolkit it runs from."""
    real = _toolkit(tmp_path / "cuda-13.0", "13.0")
    wrapper = _toolkit(tmp_path / "local", "13.0", headers=False, top=real)
    p = setup_cuda.plan_cuda("13.0", wrapper)
    assert p.with_cuda and p.cuda_home == os.path.realpath(real)
    assert p.notes == [f"CUDA_HOME={wrapper} has no include/cuda_runtime.h; using the toolkit its nvcc runs "
                       f"from, {os.path.realpath(real)}"]
    # a wrapper whose toolkit has no headers either: named, not built
    bare = _toolkit(tmp_path / "bare", "13.0", headers=False)
    p = setup_cuda.plan_cuda("13.0", bare)
    assert not p.with_cuda and f"CUDA_HOME={bare} has no include/cuda_runtime.h" in p.why


@needs_sh
def test_plan_unreadable_nvcc_version(setup_cuda, tmp_path):
    home = tmp_path / "odd"
    _toolkit(home)
    (home / "bin" / "nvcc").write_text("#!/bin/sh\necho 'something else'\n")
    p = setup_cuda.plan_cuda("13.0", str(home))
    assert not p.with_cuda and "names no CUDA release" in p.why
    (home / "bin" / "nvcc").write_text("#!/bin/sh\nexit 3\n")
    p = setup_cuda.plan_cuda("13.0", str(home))
    assert not p.with_cuda and "--version` failed" in p.why


def test_build_info_says_why_cuda_was_skipped():
    import fastdenoise

    info = fastdenoise.build_info()
    if not info["loaded"] or info["cuda"]:
        pytest.skip("needs the extension built without CUDA")
    meta = (REPO / "fastdenoise" / "_build_meta.py").read_text()
    assert f"CUDA_SKIPPED = {info['cuda_skipped']!r}" in meta
    if torch.version.cuda is None:
        assert info["cuda_skipped"] == "torch is a CPU-only build"



def _sdist_check(*args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "sdist_check.py"), *args],
                          capture_output=True, text=True, timeout=600)


def test_sdist_carries_everything_the_build_needs():
    """``pip install fastdenoise-*.tar.gz`` compiles the extension from the sdist alone: it must
    hold setup.py's toolkit check and every C++ / CUDA source and header (the CUDA ones too,
    which a CPU machine does not compile), and no build product of this machine (the wheel built
    from it is imported and run by scripts/test.sh's stage of the same script, with --wheel)."""
    out = _sdist_check()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "sdist check: ok" in out.stdout


def test_sdist_check_finds_a_missing_source(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from sdist_check import copy_source_tree
    finally:
        sys.path.remove(str(REPO / "scripts"))
    tree = copy_source_tree(REPO, tmp_path / "tree")
    manifest = (tree / "MANIFEST.in").read_text()
    assert "graft csrc\n" in manifest
    (tree / "MANIFEST.in").write_text(manifest.replace("graft csrc\n", ""))
    out = _sdist_check("--tree", str(tree))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "missing from the sdist" in out.stdout and "csrc/cuda/kernels/bm3d.cu" in out.stdout
    assert "csrc/include/fastdenoise/nlm.h" in out.stdout
