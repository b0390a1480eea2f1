"""End-to-end model benchmarks: DnCNN and InvDN, eager vs torch.compile vs fused, same input.

Contenders (one group per model, entry point, shape and dtype):

* ``eager``: the model with every fastdenoise op forced to its plain PyTorch reference, by
  setting ``FASTDENOISE_BACKEND=reference`` around the call (the documented switch of the
  dispatch rule, read at each call, so nothing in the model is patched);
* ``compiled``: ``torch.compile`` of that same call, compiled and run once under the same
  setting before timing (Dynamo guards on the variable, so the graph is the reference one);
* ``fused``: the default dispatch (``FASTDENOISE_BACKEND`` unset around the call).

Models, exactly as ``fastdenoise.models`` builds them (random weights: speed does not depend on
them): ``DnCNN(in_nc=1, out_nc=1, nc=64, nb=17, act_mode='R')`` (no Haar op, so its fused and
eager contenders differ only if the model dispatches a fastdenoise op) and
``InvNet(channel_in=3, channel_out=3)`` (block_num [8, 8], down_num=2), timed on ``forward(x)``
and on ``denoise(x, generator)`` (the generator is re-seeded each call, so every contender draws
the same noise).

Before timing, each contender's output is checked against a float32 run of the eager model with
TF32 off: normwise relative error ||out - ref|| / ||ref|| at most twice the eager contender's,
with a floor of 1e-4 (float32) or half an ulp (float16 / bfloat16).

On CPU the images are tiny (a smoke run); on CUDA 1080p in float16 and float32, and 4K float16
for DnCNN.
``extra_info["flops"]`` is not recorded (convolution FLOPs are not counted here); the report
gives times, speedups and peak memory.
"""

from __future__ import annotations

import contextlib
import copy
import os
from typing import Optional

import pytest
import torch

from conftest import compile_enabled, fresh_compile, make_generator

CONTENDERS = ("eager", "compiled", "fused")

# (model, entry point, input shape, dtype name)
# On CUDA each case costs one torch.compile of the whole model (InvNet: tens of seconds), so the
# list is kept to what fits scripts/gpu_check.sh's time budget: 1080p in both dtypes, 4K float16
# for DnCNN, and one denoise case.
CUDA_CASES = [
    ("dncnn", "forward", (1, 1, 1080, 1920), "float32"),
    ("dncnn", "forward", (1, 1, 1080, 1920), "float16"),
    ("dncnn", "forward", (1, 1, 2160, 3840), "float16"),
    ("invdn", "forward", (1, 3, 1080, 1920), "float32"),
    ("invdn", "forward", (1, 3, 1080, 1920), "float16"),
    ("invdn", "denoise", (1, 3, 1080, 1920), "float16"),
]
CPU_CASES = [
    ("dncnn", "forward", (1, 1, 64, 64), "float32"),
    ("invdn", "forward", (1, 3, 64, 64), "float32"),
    ("invdn", "denoise", (1, 3, 64, 64), "float32"),
]


def pytest_generate_tests(metafunc):
    if "model_case" not in metafunc.fixturenames:
        return
    from conftest import bench_device

    device = bench_device(metafunc.config)
    cases, ids = [], []
    for model, entry, shape, dtype in (CUDA_CASES if device.type == "cuda" else CPU_CASES):
        for contender in CONTENDERS:
            cases.append((model, entry, shape, dtype, contender))
            ids.append(f"{model}-{entry}-{'x'.join(map(str, shape))}-{dtype}-{contender}")
    metafunc.parametrize("model_case", cases, ids=ids)


@contextlib.contextmanager
def forced_backend(name: Optional[str]):
    """Set (or, with None, unset) FASTDENOISE_BACKEND for the duration of the block."""
    old = os.environ.get("FASTDENOISE_BACKEND")
    if name is None:
        os.environ.pop("FASTDENOISE_BACKEND", None)
    else:
        os.environ["FASTDENOISE_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FASTDENOISE_BACKEND", None)
        else:
            os.environ["FASTDENOISE_BACKEND"] = old


@contextlib.contextmanager
def no_tf32():
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, mm


def build_model(name: str) -> torch.nn.Module:
    from fastdenoise.models import DnCNN, InvNet

    if name == "dncnn":
        return DnCNN(in_nc=1, out_nc=1, nc=64, nb=17, act_mode="R")
    if name == "invdn":
        return InvNet(channel_in=3, channel_out=3)
    raise AssertionError(name)


def make_call(model: torch.nn.Module, entry: str, device: torch.device, seed: int):
    """``call(x)`` running the model's entry point (denoise draws from a freshly seeded generator)."""
    if entry == "forward":
        def call(x):
            return model(x)
    else:
        def call(x):
            g = torch.Generator(device=device)
            g.manual_seed(seed)
            return model.denoise(x, g)
    return call


def first_tensor(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise AssertionError(f"expected a tensor (or a tuple starting with one), got {type(out).__name__}")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    o, r = out.double(), ref.double()
    return (torch.linalg.vector_norm(o - r) / torch.linalg.vector_norm(r).clamp_min(1e-30)).item()


def test_model(model_case, bench, device, pytestconfig):
    name, entry, shape, dtype_name, contender = model_case
    dtype = getattr(torch, dtype_name)
    group = f"model {name}.{entry} {'x'.join(map(str, shape))} {dtype_name}"
    if contender == "compiled" and not compile_enabled(pytestconfig, "model"):
        pytest.skip("torch.compile of a whole model skipped on CPU smoke runs (--benchmark-disable); "
                    "pass --bench-compile=yes to include it")

    torch.manual_seed(0)  # the same weights for every contender of the group
    model = build_model(name).eval()
    seed = 1234
    x = torch.rand(shape, generator=make_generator(device, group), device=device,
                   dtype=torch.float32)
    x32 = x
    x = x.to(dtype)

    # Reference: float32 eager (plain PyTorch ops), TF32 off.
    model32 = model.to(device=device, dtype=torch.float32)
    with no_tf32(), forced_backend("reference"), torch.inference_mode():
        ref = first_tensor(make_call(model32, entry, device, seed)(x32)).clone()
    model = copy.deepcopy(model32).to(dtype) if dtype != torch.float32 else model32
    call = make_call(model, entry, device, seed)

    def eager():
        with forced_backend("reference"), torch.inference_mode():
            return call(x)

    extra = {"model": name, "entry": entry, "input_shape": list(shape), "dtype": dtype_name}
    if contender == "eager":
        fn = eager
    elif contender == "compiled":
        compiled_call = fresh_compile(call)

        def fn():
            with forced_backend("reference"), torch.inference_mode():
                return compiled_call(x)
    else:
        def fn():
            with forced_backend(None), torch.inference_mode():
                return call(x)

    # Correctness gate (and the compile / first call, left out of the timing).
    out = first_tensor(fn())
    if contender == "compiled":
        extra["graph_breaks"] = int(sum(torch._dynamo.utils.counters["graph_break"].values()))
    eager_out = out if contender == "eager" else first_tensor(eager())
    assert out.shape == eager_out.shape and out.dtype == eager_out.dtype, (
        f"{contender}: {tuple(out.shape)} {out.dtype} vs eager {tuple(eager_out.shape)} {eager_out.dtype}")
    assert torch.isfinite(out).all().item(), f"{contender} {group}: output has NaN or inf"
    err, eager_err = rel_err(out, ref), rel_err(eager_out, ref)
    floor = 1e-4 if dtype in (torch.float32, torch.float64) else 0.5 * torch.finfo(dtype).eps
    assert err <= max(2 * eager_err, floor), (
        f"{contender} {group}: relative error {err:.3e} vs float32 reference exceeds "
        f"max(2 * eager's {eager_err:.3e}, {floor:.1e})")
    extra.update({"rel_err_vs_fp32_ref": err, "eager_rel_err_vs_fp32_ref": eager_err})
    del out, eager_out, ref
    if device.type == "cuda":
        torch.cuda.empty_cache()

    bench(fn, group=group, contender=contender, kind="model",
          bytes_moved=None, extra=extra)
