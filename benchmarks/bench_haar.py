"""Haar transform benchmarks: ``fastdenoise.ops.haar_dwt2d`` / ``haar_idwt2d`` against the
official plain PyTorch code and ``torch.compile`` of it, on the same input.

One group per (op, variant, shape, dtype, memory format); its contenders:

* ``eager``: the official formulation (``_baselines``): InvDN's grouped-conv
  ``HaarDownsampling`` (and ``conv_transpose2d`` back) for ``invdn``, MWCNN's slicing
  ``dwt_init`` / ``iwt_init`` for ``mwcnn``, the same grouped conv with orthonormal filters for
  ``orthonormal``;
* ``compiled``: ``torch.compile(eager, dynamic=False)``, compiled and run once before timing;
* ``fused``: ``fastdenoise.ops.haar_dwt2d(x, variant)`` with the default dispatch
  (``backend=None``: the CUDA kernel on CUDA tensors, the C++ kernel on CPU);
* ``fused_triton``: ``backend="triton"``, on CUDA when the CUDA kernel is the default.

Before timing, each contender's output is checked against the eager output and the float64
reference (``_baselines.assert_matches``), so a benchmark never times a wrong kernel.
``extra_info["bytes_moved"]`` is the op's minimum traffic (input read once + output written
once), from which ``report.py`` gives GB/s. Shapes: on CUDA 4K and 1080p, 48 channels, float16
and float32, plus 4K float16 channels_last; on CPU one small shape so a run takes seconds.
"""

from __future__ import annotations

import pytest
import torch

from conftest import compile_enabled, fresh_compile, make_generator
from _baselines import VARIANTS, assert_matches, make_baseline

from fastdenoise import _ext
from fastdenoise.ops import haar_dwt2d, haar_dwt2d_reference, haar_idwt2d, haar_idwt2d_reference

OPS = ("dwt", "idwt")

# (full-resolution shape (B, C, H, W), dtype, memory format). The idwt input is (B, 4C, H/2, W/2).
CUDA_CASES = [
    ((1, 48, 2160, 3840), torch.float16, "nchw"),
    ((1, 48, 2160, 3840), torch.float32, "nchw"),
    ((1, 48, 1080, 1920), torch.float16, "nchw"),
    ((1, 48, 1080, 1920), torch.float32, "nchw"),
    ((1, 48, 2160, 3840), torch.float16, "channels_last"),
]
# The kernels run the same code for every variant (only the sign table differs), so on CUDA the
# orthonormal variant, which has no official module of its own, is timed on the 4K NCHW cases
# only; invdn and mwcnn on all of them. This keeps the GPU run (one torch.compile per case)
# inside scripts/gpu_check.sh's time budget.
CUDA_VARIANT_CASES = {
    "orthonormal": CUDA_CASES[:2],
    "invdn": CUDA_CASES,
    "mwcnn": CUDA_CASES,
}
CPU_CASES = [
    ((1, 48, 270, 480), torch.float32, "nchw"),
]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _contenders(device: torch.device):
    names = ["eager", "compiled", "fused"]
    if device.type == "cuda" and _ext.has_kernel("haar_dwt2d", "CUDA"):
        names.append("fused_triton")  # the CUDA kernel is the default: time Triton too
    return names


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    from conftest import bench_device

    device = bench_device(metafunc.config)
    cases, ids = [], []
    for op in OPS:
        for variant in VARIANTS:
            for shape, dtype, fmt in (CUDA_VARIANT_CASES[variant] if device.type == "cuda" else CPU_CASES):
                for contender in _contenders(device):
                    cases.append((op, variant, shape, _dtype_name(dtype), fmt, contender))
                    ids.append(f"{op}-{variant}-{'x'.join(map(str, shape))}-{_dtype_name(dtype)}-"
                               f"{fmt}-{contender}")
    metafunc.parametrize("case", cases, ids=ids)


def _input(op: str, shape, dtype, fmt: str, device: torch.device, group: str) -> torch.Tensor:
    n, c, h, w = shape
    in_shape = (n, c, h, w) if op == "dwt" else (n, 4 * c, h // 2, w // 2)
    x = torch.randn(in_shape, generator=make_generator(device, group), device=device,
                    dtype=torch.float32).to(dtype)
    if fmt == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def test_haar(case, bench, device, pytestconfig):
    op, variant, shape, dtype_name, fmt, contender = case
    dtype = getattr(torch, dtype_name)
    group = (f"haar_{op}2d {variant} {'x'.join(map(str, shape))} {_dtype_name(dtype)} {fmt}")
    x = _input(op, shape, dtype, fmt, device, group)

    eager = make_baseline(op, variant, shape[1], device, dtype)
    fused_op = haar_dwt2d if op == "dwt" else haar_idwt2d
    if contender == "eager":
        fn = eager
    elif contender == "compiled":
        if not compile_enabled(pytestconfig, "op"):
            pytest.skip("torch.compile contender switched off (--bench-compile)")
        fn = fresh_compile(eager)
    elif contender == "fused":
        def fn(t):
            return fused_op(t, variant)
    elif contender == "fused_triton":
        def fn(t):
            return fused_op(t, variant, backend="triton")
    else:  # pragma: no cover
        raise AssertionError(contender)

    # Correctness gate (also the compile and the first call, both left out of the timing).
    with torch.inference_mode():
        out = fn(x)
        eager_out = eager(x) if contender != "eager" else out
        reference = haar_dwt2d_reference if op == "dwt" else haar_idwt2d_reference
        ref64 = reference(x.double(), variant)
        assert_matches(out, eager_out, ref64, f"{contender} haar_{op}2d[{variant}]")
        del out, eager_out, ref64
    extra = {"op": f"haar_{op}2d", "variant": variant, "shape": list(shape),
             "input_shape": list(x.shape), "dtype": dtype_name, "memory_format": fmt}
    if contender == "compiled":
        extra["graph_breaks"] = int(sum(torch._dynamo.utils.counters["graph_break"].values()))
    if device.type == "cuda":
        torch.cuda.empty_cache()

    def run():
        with torch.inference_mode():
            return fn(x)

    bench(run, group=group, contender=contender, kind="op",
          bytes_moved=2 * x.numel() * x.element_size(), extra=extra)
