"""Layer norm over channels and channel-half gates: ``fastdenoise.ops.layer_norm2d`` /
``simple_gate`` / ``gelu_gate`` against the official modules' plain PyTorch maths and
``torch.compile`` of it, on the same input.

Contenders per group:

* ``eager``: the formulation of the official code, written here from its maths: NAFNet's
  LayerNorm2d (mean and biased variance over dim 1, eps 1e-6, then ``w * y + b``), Restormer's
  BiasFree LayerNorm (to (B, H W, C), ``x / sqrt(var + 1e-5) * w``, back to (B, C, H, W)),
  NAFNet's SimpleGate (``chunk`` and multiply), Restormer's GDFN gate (``gelu(x1) * x2``);
* ``compiled``: ``torch.compile`` of ``eager``;
* ``fused``: the fastdenoise op with the default dispatch (Triton on CUDA tensors; on the CPU
  these ops have no compiled kernel and the dispatch runs the plain PyTorch reference, which
  the table then shows as ``fused``).

Each contender's output is checked against the float64 reference first. ``bytes_moved`` is the
op's minimum traffic (input read once, output written once; parameters neglected), from which
``report.py`` gives GB/s and the share of the measured copy bandwidth. Shapes: on CUDA feature
maps of NAFNet / Restormer widths at 1080p and 4K in float16 and float32; on CPU one small shape.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import compile_enabled, fresh_compile, make_generator

from fastdenoise.ops import gate_reference, gelu_gate, layer_norm2d, layer_norm2d_reference, simple_gate

OPS = ("ln_nafnet", "ln_biasfree", "simple_gate", "gelu_gate")
CUDA_CASES = {
    "ln_nafnet": [((1, c, 1080, 1920), dt) for c in (32, 64, 128) for dt in (torch.float16, torch.float32)]
    + [((1, 32, 2160, 3840), torch.float16)],
    "ln_biasfree": [((1, 48, 1080, 1920), torch.float16), ((1, 48, 2160, 3840), torch.float16)],
    "simple_gate": [((1, 2 * c, 1080, 1920), torch.float16) for c in (32, 64)]
    + [((1, 64, 2160, 3840), torch.float16), ((1, 64, 1080, 1920), torch.float32)],
    "gelu_gate": [((1, 2 * 127, 1080, 1920), torch.float16), ((1, 2 * 80, 1080, 1920), torch.float32)],
}
CPU_CASES = {op: [((1, 32, 135, 240), torch.float32)] for op in OPS}


def _eager(op, c, device):
    w = torch.randn(c, device=device)
    b = torch.randn(c, device=device)
    if op == "ln_nafnet":
        def fn(x):
            mu = x.mean(1, keepdim=True)
            var = (x - mu).pow(2).mean(1, keepdim=True)
            return w.view(1, c, 1, 1) * ((x - mu) / (var + 1e-6).sqrt()) + b.view(1, c, 1, 1)
        return fn, (lambda x: layer_norm2d(x, w, b)), (lambda x: layer_norm2d_reference(x, w, b))
    if op == "ln_biasfree":
        def fn(x):
            n, _, h, wd = x.shape
            t = x.flatten(2).transpose(1, 2)
            y = t / torch.sqrt(t.var(-1, keepdim=True, unbiased=False) + 1e-5) * w
            return y.transpose(1, 2).reshape(n, c, h, wd)
        return (fn, (lambda x: layer_norm2d(x, w, None, 1e-5, True)),
                (lambda x: layer_norm2d_reference(x, w, None, 1e-5, True)))
    if op == "simple_gate":
        def fn(x):
            x1, x2 = x.chunk(2, dim=1)
            return x1 * x2
        return fn, simple_gate, (lambda x: gate_reference(x, False))

    def fn(x):
        x1, x2 = x.chunk(2, dim=1)
        return F.gelu(x1) * x2
    return fn, gelu_gate, (lambda x: gate_reference(x, True))


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    from conftest import bench_device

    cuda = bench_device(metafunc.config).type == "cuda"
    cases, ids = [], []
    for op in OPS:
        for shape, dtype in (CUDA_CASES if cuda else CPU_CASES)[op]:
            for contender in ("eager", "compiled", "fused"):
                cases.append((op, shape, dtype, contender))
                ids.append(f"{op}-{'x'.join(map(str, shape))}-{str(dtype)[6:]}-{contender}")
    metafunc.parametrize("case", cases, ids=ids)


def test_norm_gate(case, bench, device, pytestconfig):
    op, shape, dtype, contender = case
    group = f"{op} {'x'.join(map(str, shape))} {str(dtype)[6:]}"
    x = (torch.randn(shape, generator=make_generator(device, group), device=device) * 2 + 0.5).to(dtype)
    eager, fused, reference = _eager(op, shape[1], device)
    if contender == "eager":
        fn = eager
    elif contender == "compiled":
        if not compile_enabled(pytestconfig, "op"):
            pytest.skip("torch.compile contender switched off (--bench-compile)")
        fn = fresh_compile(eager)
    else:
        fn = fused
    with torch.inference_mode():
        out = fn(x)
        ref = reference(x.double()).to(out.dtype)
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
        del out, ref
    out_numel = x.numel() // 2 if "gate" in op else x.numel()
    extra = {"op": op, "shape": list(shape), "dtype": str(dtype)[6:]}
    if contender == "compiled":
        extra["graph_breaks"] = int(sum(torch._dynamo.utils.counters["graph_break"].values()))

    def run():
        with torch.inference_mode():
            return fn(x)

    bench(run, group=group, contender=contender, kind="op",
          bytes_moved=(x.numel() + out_numel) * x.element_size(), extra=extra)
