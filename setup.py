"""Builds fastdenoise._C: the CPU sources always, the CUDA sources when a CUDA-enabled torch
and a CUDA toolkit of the same major version are there (``_setup_cuda.py`` checks, and says why
not; FORCE_CUDA=1 makes that an error). Honours TORCH_CUDA_ARCH_LIST and MAX_JOBS.

    pip install --no-build-isolation -e .
"""

import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
VERSION = "0.1.0"


def _say(msg):
    print(f"[fastdenoise setup] {msg}", file=sys.stderr, flush=True)


def _write_if_changed(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path) and open(path).read() == text:
        return
    with open(path, "w") as f:
        f.write(text)


def _cuda_arch_list(cpp_extension):
    """The archs nvcc will target: TORCH_CUDA_ARCH_LIST, else what torch would pick."""
    try:
        flags = cpp_extension._get_cuda_arch_flags()
    except Exception:  # private helper; only used for the report
        flags = []
    archs = []
    for f in flags:
        if "code=sm_" in f:
            archs.append("sm_" + f.split("code=sm_")[1].split(",")[0].rstrip("]"))
        elif "code=compute_" in f:
            archs.append("compute_" + f.split("code=compute_")[1].split(",")[0].rstrip("]"))
    return archs or [a for a in os.environ.get("TORCH_CUDA_ARCH_LIST", "").replace(";", " ").split() if a]


def _extensions():
    import torch
    from torch.utils import cpp_extension

    sys.path.insert(0, ROOT)
    from _setup_cuda import plan_cuda

    force_cuda = os.environ.get("FORCE_CUDA", "0") == "1"
    plan = plan_cuda(torch.version.cuda, cpp_extension.CUDA_HOME, torch_hip=getattr(torch.version, "hip", None))
    for note in plan.notes:
        _say(note)
    with_cuda = plan.with_cuda
    if force_cuda and not with_cuda:
        raise RuntimeError(f"FORCE_CUDA=1 but the CUDA sources cannot be built: {plan.why} "
                           f"(torch {torch.__version__}, CUDA_HOME={cpp_extension.CUDA_HOME}).")
    if with_cuda and plan.cuda_home != cpp_extension.CUDA_HOME:
        # torch's build helpers read the module's CUDA_HOME when they run (nvcc, include, lib64)
        cpp_extension.CUDA_HOME = plan.cuda_home
        os.environ["CUDA_HOME"] = plan.cuda_home

    sources = ["csrc/fastdenoise.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    gen_dir = os.path.join(ROOT, "build", "generated")
    # torch picks the C++ standard its headers need; no FMA contraction, so that float sums
    # round the same on every machine (block matching: CPU and CUDA give bitwise equal distances);
    # no FP traps assumed, so float selects (max, clamp) vectorise
    cxx = ["-O3", "-ffp-contract=off", "-fno-trapping-math"]
    if sys.platform.startswith("linux"):
        cxx.append("-fopenmp")
    config = [
        "#pragma once",
        f'#define FASTDENOISE_VERSION "{VERSION}"',
        f'#define FASTDENOISE_TORCH_VERSION "{torch.__version__}"',
        '#define FASTDENOISE_BUILD_SYSTEM "setuptools"',
    ]
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/kernels/*.cu"))
        archs = _cuda_arch_list(cpp_extension)
        config += ["#define FASTDENOISE_WITH_CUDA 1",
                   f'#define FASTDENOISE_CUDA_VERSION "{torch.version.cuda}"',
                   f'#define FASTDENOISE_CUDA_ARCHS "{";".join(archs)}"']
        _say(f"building CPU + CUDA kernels (torch {torch.__version__}, CUDA {torch.version.cuda}, "
             f"nvcc {plan.nvcc_version} at {cpp_extension.CUDA_HOME}, archs {' '.join(archs) or 'torch default'})")
    else:
        _say(f"building CPU kernels only ({plan.why}; torch {torch.__version__})")
    _say(f"sources: {' '.join(sources)}; MAX_JOBS={os.environ.get('MAX_JOBS', 'auto')}")
    _write_if_changed(os.path.join(gen_dir, "fastdenoise", "build_config.h"), "\n".join(config) + "\n")
    _write_if_changed(os.path.join(ROOT, "fastdenoise", "_build_meta.py"),
                      "# Written by setup.py: what fastdenoise._C was built against.\n"
                      f"TORCH_VERSION = {torch.__version__!r}\nWITH_CUDA = {with_cuda!r}\n"
                      f"CUDA_SKIPPED = {None if with_cuda else plan.why!r}\n")

    include_dirs = [os.path.join(ROOT, "csrc", "include"), gen_dir, os.path.join(ROOT, "csrc")]
    link = ["-fopenmp"] if sys.platform.startswith("linux") else []
    if with_cuda:
        nvcc = ["-O3", "-lineinfo"]
        return [cpp_extension.CUDAExtension(
            "fastdenoise._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link)]
    return [cpp_extension.CppExtension(
        "fastdenoise._C", sources, include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx}, extra_link_args=link)]


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension
    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


setup(
    name="fastdenoise",
    version=VERSION,
    packages=find_packages(include=["fastdenoise", "fastdenoise.*"]),
    ext_modules=_extensions(),
    cmdclass=_cmdclass(),
)
