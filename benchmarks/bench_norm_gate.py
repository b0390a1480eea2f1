"""Layer norm over channels, channel-half gates and channel attention:
``fastdenoise.ops.layer_norm2d`` / ``simple_gate`` / ``gelu_gate`` / ``channel_attention`` /
``simplified_channel_attention`` against the official modules' plain PyTorch maths and
``torch.compile`` of it, on the same input.

Contenders per group:

* ``eager``: the formulation of the official code, written here from its maths: NAFNet's
  LayerNorm2d (mean and biased variance over dim 1, eps 1e-6, then ``w * y + b``), Restormer's
  BiasFree LayerNorm (to (B, H W, C), ``x / sqrt(var + 1e-5) * w``, back to (B, C, H, W)),
  NAFNet's SimpleGate (``chunk`` and multiply), Restormer's GDFN gate (``gelu(x1) * x2``),
  MPRNet's CAB tail (``AdaptiveAvgPool2d`` -> 1x1 -> ReLU -> 1x1 -> sigmoid as modules, times
  the input, plus the residual), NAFNet's SimpleGate followed by its SCA;
* ``compiled``: ``torch.compile`` of ``eager``;
* ``fused``: the fastdenoise op with the default dispatch (Triton on CUDA tensors; on the CPU
  the layer norm runs its C++ kernel, while the gates and channel attentions have no compiled
  CPU kernel and the dispatch runs their plain PyTorch reference, which the table then shows
  as ``fused``).

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

from fastdenoise.ops import (channel_attention, channel_attention_reference, gate_reference, gelu_gate,
                             layer_norm2d, layer_norm2d_reference, simple_gate, simplified_channel_attention,
                             simplified_channel_attention_reference)

OPS = ("ln_nafnet", "ln_biasfree", "simple_gate", "gelu_gate", "ca_mprnet", "sca_gate")
CUDA_CASES = {
    "ln_nafnet": [((1, c, 1080, 1920), dt) for c in (32, 64, 128) for dt in (torch.float16, torch.float32)]
    + [((1, 32, 2160, 3840), torch.float16)],
    "ln_biasfree": [((1, 48, 1080, 1920), torch.float16), ((1, 48, 2160, 3840), torch.float16)],
    "simple_gate": [((1, 2 * c, 1080, 1920), torch.float16) for c in (32, 64)]
    + [((1, 64, 2160, 3840), torch.float16), ((1, 64, 1080, 1920), torch.float32)],
    "gelu_gate": [((1, 2 * 127, 1080, 1920), torch.float16), ((1, 2 * 80, 1080, 1920), torch.float32)],
    "ca_mprnet": [((1, 80, 1080, 1920), torch.float16), ((1, 80, 1080, 1920), torch.float32),
                  ((1, 80, 2160, 3840), torch.float16)],
    "sca_gate": [((1, 2 * 64, 1080, 1920), torch.float16), ((1, 2 * 32, 2160, 3840), torch.float16)],
}
CPU_CASES = {op: [((1, 32, 135, 240), torch.float32)] for op in OPS}
CPU_CASES["ca_mprnet"] = [((1, 80, 135, 240), torch.float32)]


def _eager(op, c, device, dtype, residual=None):
    """(eager, fused, reference) for the op; parameters in the input's dtype, as a model
    converted with ``.half()`` has them."""
    w = torch.randn(c, device=device).to(dtype)
    b = torch.randn(c, device=device).to(dtype)
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
    if op == "ca_mprnet":
        se = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Conv2d(c, c // 4, 1, bias=False),
                                 torch.nn.ReLU(inplace=True), torch.nn.Conv2d(c // 4, c, 1, bias=False),
                                 torch.nn.Sigmoid()).to(device=device, dtype=dtype)
        w1, w2 = se[1].weight.detach(), se[3].weight.detach()

        def fn(x):
            return x * se(x) + residual
        return (fn, (lambda x: channel_attention(x, w1, None, w2, None, residual=residual)),
                (lambda x: channel_attention_reference(x, w1, None, w2, None, residual.to(x.dtype))))
    if op == "sca_gate":
        h = c // 2
        sca = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Conv2d(h, h, 1, bias=True)).to(
            device=device, dtype=dtype)
        w, b = sca[1].weight.detach(), sca[1].bias.detach()

        def fn(x):
            x1, x2 = x.chunk(2, dim=1)
            g = x1 * x2
            return g * sca(g)
        return (fn, (lambda x: simplified_channel_attention(x, w, b, gate=True)),
                (lambda x: simplified_channel_attention_reference(x, w, b, True)))
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
    residual = torch.randn(shape, generator=make_generator(device, group + " residual"), device=device).to(dtype) \
        if op == "ca_mprnet" else None
    eager, fused, reference = _eager(op, shape[1], device, dtype, residual)
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
    # channel attention reads x twice (the pooled means, then the scaling); the residual too
    reads = {"ca_mprnet": 3 * x.numel(), "sca_gate": 2 * x.numel()}.get(op, x.numel())
    extra = {"op": op, "shape": list(shape), "dtype": str(dtype)[6:]}
    if contender == "compiled":
        extra["graph_breaks"] = int(sum(torch._dynamo.utils.counters["graph_break"].values()))

    def run():
        with torch.inference_mode():
            return fn(x)

    bench(run, group=group, contender=contender, kind="op",
          bytes_moved=(reads + out_numel) * x.element_size(), extra=extra)
