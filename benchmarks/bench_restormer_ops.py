"""Restormer's building blocks: the fused ops and modules of fastdenoise against the official
formulation in plain PyTorch and ``torch.compile`` of it, on the same input.

The cases are a list of dicts, ``{"kind": ..., ...}``; each kind has one test function,
``test_<kind>``, which receives the cases of its kind (``pytest_generate_tests`` below), times the
three contenders ``eager``, ``compiled`` (``torch.compile`` of ``eager``) and ``fused``, and checks
each contender's output before timing. Kinds:

* ``dwconv_gate`` -- the middle of the GDFN on a (1, 2N, H, W) feature map: ``eager`` is the
  official ``dwconv`` (``F.conv2d(x, w, b, padding=1, groups=2N)``), ``chunk`` and
  ``F.gelu(x1) * x2``, written here from its maths; ``fused`` is
  :func:`fastdenoise.ops.dwconv_gate` with the default dispatch (Triton on CUDA tensors; on the
  CPU the plain PyTorch reference, which the table then shows as ``fused``). Checked against the
  float64 reference (float32 within 1e-4 -- 1e-2 for ``eager`` / ``compiled`` when cuDNN may use
  TF32 --, float16 within 2e-2).
  ``bytes_moved``: the input read once plus the gated output written once.
* ``gdfn`` -- the whole block, Restormer's ``FeedForward(dim, 2.66, bias=False)`` (hidden 127 at
  dim 48): ``eager`` is the plain module of :mod:`fastdenoise.models.restormer`, ``fused`` is
  :class:`fastdenoise.nn.GDFN` built from it by ``from_module`` (row bands, so the 2 hidden-
  channel tensor is never whole), sharing the weights. Checked against the plain module in
  float32 with TF32 off: normwise relative error at most twice ``eager``'s (floor 1e-4 in
  float32, half an ulp in float16). Peak CUDA memory is recorded by the ``bench`` fixture;
  ``flops`` counts the three convolutions' multiply-adds (2 per MAC).

* ``mdta_core`` -- the transposed attention after the q, k, v convolutions, on ``qkv`` (1, 3C,
  H, W) with C = 48, one head (d = 48): ``eager`` is the official formulation (split, reshape
  to (B, heads, d, H W), ``F.normalize`` q and k, ``softmax(q k^T * temperature) v``, back to
  (B, C, H, W), ``project_out`` as a 1x1 convolution), written here from its maths; ``fused`` is
  :func:`fastdenoise.ops.transposed_attention` (Gram pass + folded projection). Checked against
  the float64 reference (float16: normwise relative error at most twice eager's, floor half an
  ulp). ``bytes_moved``: the two-pass minimum -- qkv read once, the output written once.
* ``mdta`` -- the whole block, Restormer's ``Attention(48, 1, bias=False)``: ``eager`` the plain
  module of :mod:`fastdenoise.models.restormer`, ``fused`` :class:`fastdenoise.nn.MDTA` built
  from it; checked like ``gdfn``.
* ``pwdw`` -- the blocks' input stage alone, a 1x1 convolution ``dim -> Cmid`` then the
  depthwise 3x3 (MDTA's ``qkv_dwconv(qkv(x))``, Cmid = 3 dim) and, with ``gate``, the GELU gate
  (the GDFN's ``dwconv(project_in(x))``, Cmid = 2 hidden): ``eager`` the two ``F.conv2d`` (and
  the gate) written from the maths, ``fused`` :func:`fastdenoise.ops.pointwise_dwconv` (one
  pass; the Cmid-channel tensor never stored). Checked like ``dwconv_gate``. ``bytes_moved``:
  the input read once plus the output written once. These cases decide where ``fuse_input``
  pays (the fused op repeats the 1x1's multiply-adds about 3.4 times).

``gdfn`` and ``mdta`` also time ``fused_input``: the fused module with ``fuse_input=True``.

Float32 ``eager`` and ``compiled`` run with PyTorch's defaults (cuDNN may use TF32 for their
convolutions); the fused kernels accumulate in exact float32.

Shapes: on CUDA 1080p and 540p feature maps at Restormer's hidden widths (2 x 127, 2 x 255) in
float16, and 1080p in float32; the GDFN block at dim 48 at 1080p and 4K in float16; the MDTA
core and block at C = 48 at 1080p and 4K in float16 (and the core at 1080p in float32); the
input stage at every level's width of the denoising Restormer (48 at full size, 96 at half, 192
at a quarter, 384 at an eighth of 1080p) with and without the gate in float16, and level 1 in
float32. On CPU one small shape per kind (a smoke run).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench_models import no_tf32, rel_err
from conftest import compile_enabled, fresh_compile, make_generator

from fastdenoise import nn as fnn
from fastdenoise.models.restormer import Attention, FeedForward
from fastdenoise.ops import (dwconv_gate, dwconv_gate_reference, pointwise_dwconv, pointwise_dwconv_reference,
                             transposed_attention, transposed_attention_reference)

CONTENDERS = ("eager", "compiled", "fused")
#: kinds with more contenders than CONTENDERS
EXTRA_CONTENDERS = {"gdfn": ("fused_input",), "mdta": ("fused_input",)}

CUDA_CASES = [
    {"kind": "dwconv_gate", "shape": (1, 2 * 127, 1080, 1920), "dtype": "float16"},
    {"kind": "dwconv_gate", "shape": (1, 2 * 255, 540, 960), "dtype": "float16"},
    {"kind": "dwconv_gate", "shape": (1, 2 * 127, 1080, 1920), "dtype": "float32"},
    {"kind": "gdfn", "shape": (1, 48, 1080, 1920), "dtype": "float16", "factor": 2.66},
    {"kind": "gdfn", "shape": (1, 48, 2160, 3840), "dtype": "float16", "factor": 2.66},
    {"kind": "mdta_core", "shape": (1, 48, 1080, 1920), "dtype": "float16", "heads": 1},
    {"kind": "mdta_core", "shape": (1, 48, 2160, 3840), "dtype": "float16", "heads": 1},
    {"kind": "mdta_core", "shape": (1, 48, 1080, 1920), "dtype": "float32", "heads": 1},
    {"kind": "mdta", "shape": (1, 48, 1080, 1920), "dtype": "float16", "heads": 1},
    {"kind": "mdta", "shape": (1, 48, 2160, 3840), "dtype": "float16", "heads": 1},
    {"kind": "pwdw", "shape": (1, 48, 1080, 1920), "dtype": "float16", "cmid": 144, "gate": False},
    {"kind": "pwdw", "shape": (1, 96, 540, 960), "dtype": "float16", "cmid": 288, "gate": False},
    {"kind": "pwdw", "shape": (1, 192, 270, 480), "dtype": "float16", "cmid": 576, "gate": False},
    {"kind": "pwdw", "shape": (1, 384, 135, 240), "dtype": "float16", "cmid": 1152, "gate": False},
    {"kind": "pwdw", "shape": (1, 48, 2160, 3840), "dtype": "float16", "cmid": 144, "gate": False},
    {"kind": "pwdw", "shape": (1, 48, 1080, 1920), "dtype": "float32", "cmid": 144, "gate": False},
    {"kind": "pwdw", "shape": (1, 48, 1080, 1920), "dtype": "float16", "cmid": 254, "gate": True},
    {"kind": "pwdw", "shape": (1, 96, 540, 960), "dtype": "float16", "cmid": 510, "gate": True},
    {"kind": "pwdw", "shape": (1, 192, 270, 480), "dtype": "float16", "cmid": 1020, "gate": True},
    {"kind": "pwdw", "shape": (1, 384, 135, 240), "dtype": "float16", "cmid": 2042, "gate": True},
    {"kind": "pwdw", "shape": (1, 48, 1080, 1920), "dtype": "float32", "cmid": 254, "gate": True},
]
CPU_CASES = [
    {"kind": "dwconv_gate", "shape": (1, 2 * 127, 48, 64), "dtype": "float32"},
    {"kind": "gdfn", "shape": (1, 48, 48, 64), "dtype": "float32", "factor": 2.66},
    {"kind": "mdta_core", "shape": (1, 48, 48, 64), "dtype": "float32", "heads": 1},
    {"kind": "mdta", "shape": (1, 48, 48, 64), "dtype": "float32", "heads": 1},
    {"kind": "pwdw", "shape": (1, 48, 48, 64), "dtype": "float32", "cmid": 254, "gate": True},
]


def _name(case: dict) -> str:
    """The kind, with the input stage's output width and gate."""
    if case["kind"] != "pwdw":
        return case["kind"]
    return f"pwdw->{case['cmid']}{'+gate' if case['gate'] else ''}"


def _case_id(case: dict) -> str:
    return f"{_name(case)}-{'x'.join(map(str, case['shape']))}-{case['dtype']}"


def _group(case: dict) -> str:
    return f"{_name(case)} {'x'.join(map(str, case['shape']))} {case['dtype']}"


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    from conftest import bench_device

    kind = metafunc.function.__name__[len("test_"):]
    cuda = bench_device(metafunc.config).type == "cuda"
    cases, ids = [], []
    for case in CUDA_CASES if cuda else CPU_CASES:
        if case["kind"] != kind:
            continue
        for contender in CONTENDERS + EXTRA_CONTENDERS.get(kind, ()):
            cases.append((case, contender))
            ids.append(f"{_case_id(case)}-{contender}")
    metafunc.parametrize("case, contender", cases, ids=ids)


def _pick(contender: str, eager, fused, pytestconfig):
    """The callable a contender times; for ``fused_input`` a copy-free twin of the fused
    module with ``fuse_input`` set."""
    if contender == "eager":
        return eager
    if contender == "compiled":
        if not compile_enabled(pytestconfig, "op"):
            pytest.skip("torch.compile contender switched off (--bench-compile)")
        return fresh_compile(eager)
    if contender == "fused_input":
        return type(fused).from_module(fused, fuse_input=True)
    return fused


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def test_dwconv_gate(case, contender, bench, device, pytestconfig):
    shape, dtype = case["shape"], getattr(torch, case["dtype"])
    group = _group(case)
    c = shape[1]
    x = (torch.randn(shape, generator=make_generator(device, group), device=device) * 2 + 0.5).to(dtype)
    g = make_generator(device, group + " weights")
    w = (torch.randn((c, 1, 3, 3), generator=g, device=device) / 3).to(dtype)   # ~ a 3x3 conv's init scale
    b = (torch.randn((c,), generator=g, device=device) * 0.1).to(dtype)

    def eager(t):
        y = F.conv2d(t, w, b, stride=1, padding=1, groups=c)
        x1, x2 = y.chunk(2, dim=1)
        return F.gelu(x1) * x2

    fn = _pick(contender, eager, lambda t: dwconv_gate(t, w, b), pytestconfig)
    with torch.inference_mode():
        out = fn(x)                  # under the settings of the timed calls (the compile happens here)
        ref = dwconv_gate_reference(x.double(), w.double(), b.double()).to(out.dtype)
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        if dtype == torch.float32 and contender != "fused" and device.type == "cuda" \
                and torch.backends.cudnn.allow_tf32:
            tol = 1e-2               # cuDNN's TF32 convolution (PyTorch's default)
        torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
        del out, ref
    _release(device)
    extra = {"op": "dwconv_gate", "shape": list(shape), "dtype": case["dtype"]}
    if contender == "compiled":
        extra["graph_breaks"] = int(sum(torch._dynamo.utils.counters["graph_break"].values()))

    def run():
        with torch.inference_mode():
            return fn(x)

    bench(run, group=group, contender=contender, kind="op",
          bytes_moved=(x.numel() + x.numel() // 2) * x.element_size(), extra=extra)


def test_gdfn(case, contender, bench, device, pytestconfig):
    shape, dtype, factor = case["shape"], getattr(torch, case["dtype"]), case["factor"]
    group = _group(case)
    bsz, dim, h, w = shape
    torch.manual_seed(0)                                  # the same weights for every contender
    plain = FeedForward(dim, factor, bias=False).to(device).eval()
    x32 = torch.randn(shape, generator=make_generator(device, group), device=device)
    with torch.inference_mode(), no_tf32():
        ref = plain(x32)
    x = x32.to(dtype)
    plain = plain.to(dtype)
    fused_module = fnn.GDFN.from_module(plain)
    fn = _pick(contender, plain, fused_module, pytestconfig)

    with torch.inference_mode():
        out = fn(x)
        eager_out = out if contender == "eager" else plain(x)
        assert out.shape == ref.shape and out.dtype == dtype
        assert torch.isfinite(out).all().item(), f"{contender} {group}: output has NaN or inf"
        err, eager_err = rel_err(out, ref), rel_err(eager_out, ref)
        floor = 1e-4 if dtype in (torch.float32, torch.float64) else 0.5 * torch.finfo(dtype).eps
        assert err <= max(2 * eager_err, floor), (
            f"{contender} {group}: relative error {err:.3e} vs the float32 module exceeds "
            f"max(2 * eager's {eager_err:.3e}, {floor:.1e})")
        del out, eager_out, ref, x32
    _release(device)
    hidden = int(dim * factor)
    extra = {"block": "gdfn", "shape": list(shape), "dtype": case["dtype"], "hidden": hidden,
             "rel_err_vs_fp32": err, "eager_rel_err_vs_fp32": eager_err}
    if contender.startswith("fused"):
        from fastdenoise.nn.gdfn import chunk_rows_for
        extra["chunk_rows"] = chunk_rows_for(x, hidden if contender == "fused_input" else 2 * hidden)
    if contender == "compiled":
        extra["graph_breaks"] = int(sum(torch._dynamo.utils.counters["graph_break"].values()))
    macs = bsz * h * w * (dim * 2 * hidden + 9 * 2 * hidden + hidden * dim)

    def run():
        with torch.inference_mode():
            return fn(x)

    bench(run, group=group, contender=contender, kind="op", flops=2 * macs, extra=extra)


def _check_op(out, ref, eager_out, contender: str, group: str, device) -> None:
    """An op's output against its float64 reference: float32 within 1e-4 (1e-2 for ``eager`` /
    ``compiled`` when cuDNN may use TF32); float16 / bfloat16: normwise relative error at most
    twice that of ``eager_out()`` (floor half an ulp)."""
    dtype = out.dtype
    if dtype == torch.float32:
        tf32 = contender in ("eager", "compiled") and device.type == "cuda" and torch.backends.cudnn.allow_tf32
        tol = 1e-2 if tf32 else 1e-4
        torch.testing.assert_close(out, ref.to(dtype), rtol=tol, atol=tol)
        return
    err, eager_err = rel_err(out, ref), rel_err(eager_out(), ref)
    assert err <= max(2 * eager_err, 0.5 * torch.finfo(dtype).eps), (
        f"{contender} {group}: relative error {err:.3e} exceeds twice eager's {eager_err:.3e}")


def _mdta_eager(temperature, heads, w):
    """The official attention core on qkv, written from its maths (project_out as a 1x1 conv)."""
    def eager(qkv):
        b, c3, h, wd = qkv.shape
        c = c3 // 3
        q, k, v = (t.reshape(b, heads, c // heads, h * wd) for t in qkv.chunk(3, dim=1))
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * temperature).softmax(dim=-1)
        return F.conv2d((attn @ v).reshape(b, c, h, wd), w)
    return eager


def test_mdta_core(case, contender, bench, device, pytestconfig):
    shape, dtype, heads = case["shape"], getattr(torch, case["dtype"]), case["heads"]
    group = _group(case)
    bsz, c, h, w = shape
    qkv = torch.randn((bsz, 3 * c, h, w), generator=make_generator(device, group), device=device).to(dtype)
    g = make_generator(device, group + " weights")
    temperature = (torch.rand((heads, 1, 1), generator=g, device=device) * 2 + 0.5).to(dtype)
    wout = (torch.randn((c, c, 1, 1), generator=g, device=device) / c ** 0.5).to(dtype)
    eager = _mdta_eager(temperature, heads, wout)
    fn = _pick(contender, eager, lambda t: transposed_attention(t, temperature, heads, wout), pytestconfig)
    with torch.inference_mode():
        out = fn(qkv)
        ref = transposed_attention_reference(qkv.double(), temperature.double(), heads, wout.double())
        _check_op(out, ref, lambda: eager(qkv), contender, group, device)
        del out, ref
    _release(device)
    extra = {"op": "mdta_core", "shape": list(shape), "dtype": case["dtype"], "heads": heads}
    if contender == "compiled":
        extra["graph_breaks"] = int(sum(torch._dynamo.utils.counters["graph_break"].values()))

    def run():
        with torch.inference_mode():
            return fn(qkv)

    bench(run, group=group, contender=contender, kind="op",
          bytes_moved=(qkv.numel() + qkv.numel() // 3) * qkv.element_size(), extra=extra)


def test_mdta(case, contender, bench, device, pytestconfig):
    shape, dtype, heads = case["shape"], getattr(torch, case["dtype"]), case["heads"]
    group = _group(case)
    bsz, dim, h, w = shape
    torch.manual_seed(0)                                  # the same weights for every contender
    plain = Attention(dim, heads, bias=False).to(device).eval()
    with torch.no_grad():
        plain.temperature.uniform_(0.5, 2.5)
    x32 = torch.randn(shape, generator=make_generator(device, group), device=device)
    with torch.inference_mode(), no_tf32():
        ref = plain(x32)
    x = x32.to(dtype)
    plain = plain.to(dtype)
    fn = _pick(contender, plain, fnn.MDTA.from_module(plain), pytestconfig)
    with torch.inference_mode():
        out = fn(x)
        eager_out = out if contender == "eager" else plain(x)
        assert out.shape == ref.shape and out.dtype == dtype
        err, eager_err = rel_err(out, ref), rel_err(eager_out, ref)
        floor = 1e-4 if dtype == torch.float32 else 0.5 * torch.finfo(dtype).eps
        if dtype == torch.float32 and device.type == "cuda" and torch.backends.cudnn.allow_tf32:
            floor = 1e-2             # cuDNN's TF32 convolutions in every contender (PyTorch's default)
        assert err <= max(2 * eager_err, floor), (
            f"{contender} {group}: relative error {err:.3e} vs the float32 module exceeds "
            f"max(2 * eager's {eager_err:.3e}, {floor:.1e})")
        del out, eager_out, ref, x32
    _release(device)
    extra = {"block": "mdta", "shape": list(shape), "dtype": case["dtype"], "heads": heads,
             "rel_err_vs_fp32": err, "eager_rel_err_vs_fp32": eager_err}
    if contender == "compiled":
        extra["graph_breaks"] = int(sum(torch._dynamo.utils.counters["graph_break"].values()))

    def run():
        with torch.inference_mode():
            return fn(x)

    bench(run, group=group, contender=contender, kind="op", extra=extra)


def test_pwdw(case, contender, bench, device, pytestconfig):
    shape, dtype, cmid, gate = case["shape"], getattr(torch, case["dtype"]), case["cmid"], case["gate"]
    group = _group(case)
    cin = shape[1]
    x = torch.randn(shape, generator=make_generator(device, group), device=device).to(dtype)
    g = make_generator(device, group + " weights")
    w = (torch.randn((cmid, cin, 1, 1), generator=g, device=device) / cin ** 0.5).to(dtype)
    wd = (torch.randn((cmid, 1, 3, 3), generator=g, device=device) / 3).to(dtype)

    def eager(t):
        y = F.conv2d(F.conv2d(t, w), wd, padding=1, groups=cmid)
        if gate:
            x1, x2 = y.chunk(2, dim=1)
            y = F.gelu(x1) * x2
        return y

    fn = _pick(contender, eager, lambda t: pointwise_dwconv(t, w, wd, gate=gate), pytestconfig)
    with torch.inference_mode():
        out = fn(x)
        ref = pointwise_dwconv_reference(x.double(), w.double(), wd.double(), gate=gate)
        _check_op(out, ref, lambda: eager(x), contender, group, device)
        n_out = out.shape[1]
        del out, ref
    _release(device)
    extra = {"op": "pointwise_dwconv", "shape": list(shape), "dtype": case["dtype"], "cmid": cmid, "gate": gate}
    if contender == "compiled":
        extra["graph_breaks"] = int(sum(torch._dynamo.utils.counters["graph_break"].values()))
    bsz, _, h, wd_ = shape
    macs = bsz * h * wd_ * (cin * cmid + 9 * cmid)

    def run():
        with torch.inference_mode():
            return fn(x)

    bench(run, group=group, contender=contender, kind="op", flops=2 * macs,
          bytes_moved=(x.numel() + bsz * n_out * h * wd_) * x.element_size(), extra=extra)
