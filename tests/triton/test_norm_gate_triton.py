"""Triton layer norm over channels and channel-half gates (fastdenoise.triton.norm / gate)
against the plain PyTorch references of fastdenoise.ops.norm / gate.

Under ``TRITON_INTERPRET=1`` on the CPU: float32, float16 and float64, NCHW and channels_last,
strided inputs, odd sizes, batch > 1, 64-bit offsets, autograd. On the GPU only
(``@pytest.mark.cuda``): bfloat16 (NaN under the interpreter), ``opcheck`` and
``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from fastdenoise._checks import memory_format_of  # noqa: E402
from fastdenoise.ops import gate as G  # noqa: E402
from fastdenoise.ops import norm as N  # noqa: E402
from fastdenoise.ops import gate_reference, gelu_gate, layer_norm2d, layer_norm2d_reference, simple_gate  # noqa: E402

from ._common import DEVICE, MARKS  # noqa: E402

pytestmark = MARKS
LAYOUTS = ("nchw", "channels_last")
# odd channel counts (padded tiles), C = 1, a width-32 NAFNet level, Restormer's 48, 1x1 images
SHAPES = [(2, 5, 7, 9), (1, 48, 3, 11), (3, 1, 4, 4), (2, 32, 1, 1), (1, 130, 2, 3)]
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.float64: (1e-12, 1e-12),
       torch.bfloat16: (1.6e-2, 1.6e-2)}
DTYPES = (torch.float32, torch.float16, torch.float64)


def _layout(x, layout):
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ["nafnet", "withbias", "biasfree"])
def test_layer_norm_matches_reference(shape, layout, dtype, variant):
    x = _layout((torch.randn(shape, device=DEVICE) * 2 + 0.5).to(dtype), layout)
    w = torch.randn(shape[1], device=DEVICE)
    b = None if variant == "biasfree" else torch.randn(shape[1], device=DEVICE)
    eps = N.NAFNET_EPS if variant == "nafnet" else N.RESTORMER_EPS
    got = layer_norm2d(x, w, b, eps, variant == "biasfree", backend="triton")
    ref = layer_norm2d_reference(x, w, b, eps, variant == "biasfree")
    assert got.dtype == dtype and got.shape == x.shape
    assert got.is_contiguous(memory_format=memory_format_of(x))
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got, ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("shape", [(2, 6, 7, 9), (1, 10, 3, 5), (3, 2, 1, 1), (1, 96, 2, 2)])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gelu", [False, True])
def test_gate_matches_reference(shape, layout, dtype, gelu):
    x = _layout(torch.randn(shape, device=DEVICE).to(dtype), layout)
    got = (gelu_gate if gelu else simple_gate)(x, backend="triton")
    ref = gate_reference(x, gelu)
    assert got.dtype == dtype and got.shape == (shape[0], shape[1] // 2, shape[2], shape[3])
    assert got.is_contiguous(memory_format=memory_format_of(x))
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got, ref, rtol=rtol, atol=atol)


def test_strided_inputs():
    x = torch.randn(2, 12, 5, 14, device=DEVICE)[..., ::2]
    w, b = torch.randn(12, device=DEVICE), torch.randn(12, device=DEVICE)
    torch.testing.assert_close(layer_norm2d(x, w, b, backend="triton"), layer_norm2d_reference(x, w, b),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(simple_gate(x, backend="triton"), gate_reference(x), rtol=0, atol=0)


def _width_one(b, c, h, layout):
    """(b, c, h, 1) tensors PyTorch calls contiguous (NCHW) or channels_last whose stride(3) is
    not the pixel step (size-1 dims do not count for contiguity): made by transposing H and W."""
    x = _layout(torch.randn(b, c, 1, h, device=DEVICE), layout).transpose(2, 3)
    assert x.shape == (b, c, h, 1) and x.stride(3) != x.stride(2)
    return x


@pytest.mark.parametrize("layout", LAYOUTS)
def test_width_one_with_any_last_stride(layout):
    x = _width_one(2, 8, 16, layout)
    w, b = torch.randn(8, device=DEVICE), torch.randn(8, device=DEVICE)
    torch.testing.assert_close(layer_norm2d(x, w, b, backend="triton"), layer_norm2d_reference(x, w, b),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(simple_gate(x, backend="triton"), gate_reference(x), rtol=0, atol=0)
    torch.testing.assert_close(gelu_gate(x, backend="triton"), gate_reference(x, True), rtol=1e-5, atol=1e-5)


def test_int64_offsets_give_the_same_result():
    from fastdenoise.triton import gate as tg
    from fastdenoise.triton import norm as tn
    x = torch.randn(2, 8, 5, 7, device=DEVICE)
    w, b = torch.randn(8, device=DEVICE), torch.randn(8, device=DEVICE)
    assert torch.equal(tn._layer_norm2d(x, w, b, 1e-6, False, force_int64=True),
                       tn._layer_norm2d(x, w, b, 1e-6, False))
    assert torch.equal(tg._gate(x, True, force_int64=True), tg._gate(x, True))


def test_autograd_through_the_triton_ops():
    x = torch.randn(1, 6, 3, 4, device=DEVICE, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, device=DEVICE, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, device=DEVICE, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: layer_norm2d(*a, backend="triton"), (x, w, b))
    assert torch.autograd.gradcheck(lambda u: gelu_gate(u, backend="triton"), (x,))
    # gradient with respect to the input only
    (gx,) = torch.autograd.grad(layer_norm2d(x, w.detach(), None, bias_free=True, backend="triton").sum(), (x,))
    assert gx.shape == x.shape


@pytest.mark.cuda
@pytest.mark.parametrize("layout", LAYOUTS)
def test_bfloat16_on_gpu(layout):
    x = _layout(torch.randn(2, 48, 9, 13, device="cuda").bfloat16(), layout)
    w, b = torch.randn(48, device="cuda"), torch.randn(48, device="cuda")
    rtol, atol = TOL[torch.bfloat16]
    torch.testing.assert_close(layer_norm2d(x, w, b), layer_norm2d_reference(x, w, b), rtol=rtol, atol=atol)
    torch.testing.assert_close(gelu_gate(x), gate_reference(x, True), rtol=rtol, atol=atol)


@pytest.mark.cuda
def test_opcheck_and_compile_on_gpu():
    x = torch.randn(2, 16, 9, 13, device="cuda")
    w, b = torch.randn(16, device="cuda"), torch.randn(16, device="cuda")
    N._triton()
    G._triton()
    torch.library.opcheck(torch.ops.fastdenoise.layer_norm2d_triton.default, (x, w, b, 1e-6, False))
    torch.library.opcheck(torch.ops.fastdenoise.layer_norm2d_triton.default, (x, w, None, 1e-5, True))
    torch.library.opcheck(torch.ops.fastdenoise.gate_triton.default, (x, True))

    def block(t):
        return simple_gate(layer_norm2d(t, w, b))

    compiled = torch.compile(block, fullgraph=True)
    torch.testing.assert_close(compiled(x), block(x), rtol=1e-5, atol=1e-5)
