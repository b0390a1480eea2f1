"""Triton 1x1 + depthwise 3x3 (+ GELU gate) (fastdenoise.triton.pwdw) against the plain PyTorch
reference of fastdenoise.ops.pwdw, and MDTA / GDFN with ``fuse_input`` on it against
Restormer's plain Attention / FeedForward.

Under ``TRITON_INTERPRET=1`` on the CPU (tiny shapes: the interpreter is slow): float32 and
float16, NCHW and channels_last, strided views read in place, 1x1 / one-row / one-column
images, bands, column runs and channel tiles cut in every direction, Cin sliced by 16 and
masked, batch > 1, biases on and off, 64-bit offsets, autograd. On the GPU only
(``@pytest.mark.cuda``): bfloat16 (NaN under the interpreter), ``opcheck``,
``torch.compile(fullgraph=True)``, Restormer-sized feature maps.
"""

from __future__ import annotations

import importlib

import pytest
import torch

pytest.importorskip("triton")

from fastdenoise import errors  # noqa: E402
from fastdenoise import nn as fnn  # noqa: E402
from fastdenoise._checks import memory_format_of  # noqa: E402
from fastdenoise.models.restormer import Attention, FeedForward  # noqa: E402
from fastdenoise.ops import pointwise_dwconv, pointwise_dwconv_reference  # noqa: E402

from ._common import DEVICE, MARKS  # noqa: E402

pytestmark = MARKS
P = importlib.import_module("fastdenoise.ops.pwdw")
LAYOUTS = ("nchw", "channels_last")
# relative to the output's largest magnitude (float16: the final rounding, 2^-11, plus the
# float32 sums' order)
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
# (B, Cin, Cmid, H, W): a 1x1 image; one row over three column runs of 16; a tall image over
# three bands of 16 rows; Cmid over two channel tiles of 32 (with the gate: 2 x 17); Cin = 20
# (two slices of 16, the second masked) and Cin = 48 (three slices); batch > 1
SHAPES = [(2, 5, 6, 7, 9), (1, 3, 4, 1, 1), (1, 4, 8, 1, 40), (1, 6, 12, 37, 3), (2, 20, 34, 5, 4),
          (1, 48, 36, 3, 3)]


def _layout(x, layout):
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def _args(b, cin, cmid, h, w, dtype, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=1.0):
        return (torch.randn(shape, generator=g) * s).to(DEVICE, dtype)

    x = r(b, cin, h, w, s=1.5) + 0.2
    wt, wd = r(cmid, cin, 1, 1, s=0.4), r(cmid, 1, 3, 3, s=0.5)
    return x, wt, wd, (r(cmid) if bias else None), (r(cmid) if bias else None)


def _close(got, ref, dtype):
    assert got.dtype == ref.dtype and got.shape == ref.shape
    scale = max(1.0, ref.float().abs().max().item())
    err = (got.float() - ref.float()).abs().max().item()
    assert err <= TOL[dtype] * scale, (err, scale)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("gate", [False, True])
def test_matches_reference(shape, layout, dtype, gate):
    x, wt, wd, b, bd = _args(*shape, dtype, seed=sum(shape))
    x = _layout(x, layout)
    got = pointwise_dwconv(x, wt, wd, b, bd, gate=gate, backend="triton")
    ref = pointwise_dwconv_reference(x, wt, wd, b, bd, gate=gate)
    assert got.is_contiguous(memory_format=memory_format_of(x))
    _close(got, ref, dtype)


@pytest.mark.parametrize("dtype, layout, gate", [(torch.float32, "nchw", True),
                                                 (torch.float16, "channels_last", False)])
def test_bands_runs_and_channel_tiles_cut_at_once(dtype, layout, gate):
    """Two bands x two column runs x two (three without the gate) channel tiles in one launch,
    each cut short: H = 17, W = 17, Cmid = 66 (the gate's halves: 33 channels)."""
    x, wt, wd, b, bd = _args(1, 5, 66, 17, 17, dtype, seed=12)
    x = _layout(x, layout)
    _close(pointwise_dwconv(x, wt, wd, b, bd, gate=gate, backend="triton"),
           pointwise_dwconv_reference(x, wt, wd, b, bd, gate=gate), dtype)


@pytest.mark.parametrize("gate", [False, True])
def test_without_biases_and_with_one(gate):
    x, wt, wd, b, bd = _args(2, 6, 10, 6, 5, torch.float32, seed=3)
    for bb, bdd in ((None, None), (b, None), (None, bd)):
        _close(pointwise_dwconv(x, wt, wd, bb, bdd, gate=gate, backend="triton"),
               pointwise_dwconv_reference(x, wt, wd, bb, bdd, gate=gate), torch.float32)


def test_strided_views_read_in_place():
    _, wt, wd, b, bd = _args(2, 6, 8, 5, 7, torch.float32, seed=4)
    wide = torch.randn(2, 6, 5, 14, device=DEVICE)[..., ::2]          # stride 2 along W
    chan = torch.randn(2, 10, 5, 7, device=DEVICE)[:, 2:8]            # a channel slice
    rows = _layout(torch.randn(2, 6, 9, 7, device=DEVICE), "channels_last")[:, :, 2:7]   # a band of rows
    for v in (wide, chan, rows):
        _close(pointwise_dwconv(v, wt, wd, b, bd, gate=True, backend="triton"),
               pointwise_dwconv_reference(v, wt, wd, b, bd, gate=True), torch.float32)


def test_float32_parameters_with_float16_input():
    """The 1x1's weight is rounded to x's dtype for the tensor cores (documented); the taps and
    the biases are used in float32."""
    x, wt, wd, b, bd = _args(1, 6, 8, 4, 5, torch.float32, seed=5)
    xh = x.half()
    got = pointwise_dwconv(xh, wt, wd, b, bd, gate=True, backend="triton")
    _close(got, pointwise_dwconv_reference(xh, wt.half(), wd, b, bd, gate=True), torch.float16)


def test_int64_offsets_give_the_same_result():
    from fastdenoise.triton import pwdw as tp
    for layout in LAYOUTS:
        for gate in (False, True):
            x, wt, wd, b, bd = _args(2, 5, 6, 5, 7, torch.float32, seed=6)
            x = _layout(x, layout)
            assert torch.equal(tp._pointwise_dwconv(x, wt, wd, b, bd, gate, force_int64=True),
                               tp._pointwise_dwconv(x, wt, wd, b, bd, gate))


def test_float64_runs_the_reference_and_forcing_triton_raises(monkeypatch):
    x, wt, wd, b, bd = _args(1, 3, 4, 3, 3, torch.float64, seed=7)
    monkeypatch.delenv("FASTDENOISE_BACKEND", raising=False)
    assert torch.equal(pointwise_dwconv(x, wt, wd, b, bd), pointwise_dwconv_reference(x, wt, wd, b, bd))
    with pytest.raises(errors.DTypeError, match="x: the Triton kernel takes float16, bfloat16 or float32, got float64"):
        pointwise_dwconv(x, wt, wd, b, bd, backend="triton")


def test_input_not_modified_and_autograd():
    x, wt, wd, b, bd = _args(1, 3, 4, 4, 3, torch.float32, seed=8)
    saved = [t.clone() for t in (x, wt, wd, b, bd)]
    pointwise_dwconv(x, wt, wd, b, bd, gate=True, backend="triton")
    assert all(torch.equal(t, s) for t, s in zip((x, wt, wd, b, bd), saved))
    leaves = [t.requires_grad_(True) for t in (x, wt, wd, b, bd)]
    out = pointwise_dwconv(*leaves, gate=True, backend="triton")
    grads = torch.autograd.grad((out * out).sum(), leaves)
    want = torch.autograd.grad((lambda o: (o * o).sum())(pointwise_dwconv_reference(*leaves, gate=True)), leaves)
    for g, w in zip(grads, want):
        _close(g, w, torch.float32)
    (gx,) = torch.autograd.grad(pointwise_dwconv(x, wt.detach(), wd.detach(), backend="triton").sum(), (x,))
    assert gx.shape == x.shape


@pytest.mark.parametrize("layout", LAYOUTS)
def test_restormer_blocks_with_fused_input_equal_plain(monkeypatch, layout):
    monkeypatch.setenv("FASTDENOISE_BACKEND", "triton")
    g = torch.Generator().manual_seed(9)
    att = Attention(8, 2, False).to(DEVICE).eval()
    ffn = FeedForward(4, 2.66, True).to(DEVICE).eval()                 # hidden 10: 20 channels
    with torch.no_grad():
        for p in list(att.parameters()) + list(ffn.parameters()):
            p.copy_(0.4 * torch.randn(p.shape, generator=g).to(DEVICE))
    x8 = _layout(torch.randn(2, 8, 7, 5, generator=g).to(DEVICE), layout)
    x4 = _layout(torch.randn(2, 4, 7, 5, generator=g).to(DEVICE), layout)
    with torch.no_grad():
        _close(fnn.MDTA.from_module(att, fuse_input=True)(x8), att(x8), torch.float32)
        want = ffn(x4)
        for rows in (3, None):
            _close(fnn.GDFN.from_module(ffn, chunk_rows=rows, fuse_input=True)(x4), want, torch.float32)


@pytest.mark.cuda
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("gate", [False, True])
def test_low_precision_and_large_on_gpu(layout, gate):
    """Restormer's level-1 widths (48 -> 144 for MDTA, 48 -> 254 for the GDFN) on an odd-sized
    map, bfloat16 / float16 / float32."""
    cmid = 254 if gate else 144
    x, wt, wd, b, bd = _args(2, 48, cmid, 37, 67, torch.float32, seed=10)
    x = _layout(x, layout)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        args = [t.to(dtype) for t in (x, wt, wd, b, bd)]
        _close(pointwise_dwconv(*args, gate=gate), pointwise_dwconv_reference(*args, gate=gate), dtype)


@pytest.mark.cuda
def test_opcheck_and_compile_on_gpu():
    x, wt, wd, b, bd = _args(2, 16, 24, 9, 13, torch.float32, seed=11)
    P._triton()
    op = torch.ops.fastdenoise.pointwise_dwconv_triton.default
    torch.library.opcheck(op, (x, wt, wd, b, bd, False))
    torch.library.opcheck(op, (x.contiguous(memory_format=torch.channels_last), wt, wd, None, None, True))
    torch.library.opcheck(op, (x.clone().requires_grad_(True), wt, wd, b, bd, True))

    compiled = torch.compile(lambda t: pointwise_dwconv(t, wt, wd, b, bd, gate=True), fullgraph=True)
    _close(compiled(x), pointwise_dwconv_reference(x, wt, wd, b, bd, gate=True), torch.float32)

    ffn = FeedForward(8, 2.66, False).cuda().eval()
    fused = fnn.GDFN.from_module(ffn, chunk_rows=4, fuse_input=True)
    xg = torch.randn(1, 8, 11, 10, device="cuda")
    with torch.no_grad():
        _close(torch.compile(fused, fullgraph=True)(xg), ffn(xg), torch.float32)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_restormer_with_fused_input_on_gpu(dtype, monkeypatch):
    """A small Restormer with ``fuse_input`` (the model cast to the dtype: under autocast the
    fused input stage stands down) against the plain model: float32 within 1e-4 of the largest
    output (TF32 off for the other convolutions), float16 / bfloat16 at most twice the plain
    model's error in that dtype (DESIGN.md), NCHW and channels_last."""
    from fastdenoise.models import Restormer
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cfg = dict(dim=16, num_blocks=[1, 2, 1, 1], num_refinement_blocks=1, heads=[1, 2, 2, 4])
    plain = Restormer(**cfg, fused=False).cuda().eval()
    model = Restormer(**cfg, fuse_input=True).cuda().eval()
    model.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 40, 56, device="cuda")
    with torch.no_grad():
        exact = plain.double()(x.double())
        eager = plain.to(dtype)(x.to(dtype)).double()
        model.to(dtype)
        for xi in (x, x.contiguous(memory_format=torch.channels_last)):
            got = model(xi.to(dtype)).double()
            if dtype == torch.float32:
                assert (got - exact).abs().max().item() <= 1e-4 * max(1.0, exact.abs().max().item())
            else:
                assert (got - exact).abs().max().item() <= 2 * (eager - exact).abs().max().item()
