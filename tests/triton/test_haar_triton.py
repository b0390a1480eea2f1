"""Triton Haar transform (fastdenoise.triton.haar) against the plain PyTorch reference.

Runs on CPU under ``TRITON_INTERPRET=1`` (CI: ``TRITON_INTERPRET=1 python -m pytest tests/triton``)
or on a CUDA GPU. Under the interpreter: float32, float16 and float64, both memory formats,
non-contiguous inputs, autograd. On the GPU only (``@pytest.mark.cuda``): bfloat16 (NaN under the
interpreter), ``opcheck`` (fake tensors), ``torch.compile`` and a > 2**31-element tensor.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")

from fastdenoise import errors  # noqa: E402
from fastdenoise._checks import memory_format_of  # noqa: E402
from fastdenoise.ops import haar as H  # noqa: E402
from fastdenoise.ops import (  # noqa: E402
    haar_dwt2d,
    haar_dwt2d_reference,
    haar_idwt2d,
    haar_idwt2d_reference,
)

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(not INTERPRET and not torch.cuda.is_available(),
                       reason="Triton kernels need a CUDA GPU or TRITON_INTERPRET=1 (CPU interpreter)"),
]

#: The device the Triton kernels run on in this process.
DEVICE = "cpu" if INTERPRET or not torch.cuda.is_available() else "cuda"

VARIANTS = ("orthonormal", "invdn", "mwcnn")
LAYOUTS = ("nchw", "channels_last")
EPS = {torch.float32: torch.finfo(torch.float32).eps, torch.float16: torch.finfo(torch.float16).eps,
       torch.bfloat16: torch.finfo(torch.bfloat16).eps, torch.float64: torch.finfo(torch.float64).eps}

# (B, C, H, W): odd C and odd H/2, W/2 (scalar path, V = 1), W/2 a multiple of 2, 4, 8 and C a
# multiple of 4/8 (vectorised groups in either layout), batch > 1, the smallest 2x2 input.
SHAPES = [(2, 3, 6, 34), (1, 7, 66, 2), (3, 1, 2, 66), (2, 8, 34, 16), (2, 12, 6, 12), (1, 1, 2, 2)]

needs_compiled_triton = pytest.mark.skipif(
    INTERPRET, reason="needs compiled Triton on a CUDA GPU (not the TRITON_INTERPRET=1 interpreter)")


def _th():
    return H._triton()


def _rand(shape, dtype, layout="nchw", device=None):
    x = torch.randn(shape, dtype=torch.float32, device=device or DEVICE).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _check_close_to_ref64(out, ref_same_dtype, ref64, scale):
    """out vs the float64 reference: float32/float64 within a relative 1e-5 / 1e-12 of the
    input scale; float16/bfloat16 error at most 2x the error of the reference run in the same
    dtype (elementwise), plus a float32-rounding-sized slack."""
    assert out.dtype == ref_same_dtype.dtype
    assert out.shape == ref64.shape
    err = (out.double() - ref64).abs()
    if out.dtype in (torch.float32, torch.float64):
        rtol = 1e-5 if out.dtype == torch.float32 else 1e-12
        bound = rtol * (ref64.abs() + scale)
    else:
        bound = 2 * (ref_same_dtype.double() - ref64).abs() + 4 * EPS[torch.float32] * (ref64.abs() + scale)
    bad = err > bound
    assert not bad.any(), (f"{int(bad.sum())} of {err.numel()} elements off: max error {err.max().item():.3e}, "
                           f"max excess {(err - bound).max().item():.3e}")


def _expect_format(out, inp):
    fmt = memory_format_of(inp)
    assert out.is_contiguous(memory_format=fmt), (out.shape, out.stride(), fmt)


# --------------------------------------------------------------------------------------------
# Reference match
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_dwt_matches_reference(variant, dtype, layout, shape):
    x = _rand(shape, dtype, layout)
    x_before = x.clone()
    y = haar_dwt2d(x, variant, backend="triton")
    assert torch.equal(x, x_before), "the input was modified"
    n, c, h, w = shape
    assert y.shape == (n, 4 * c, h // 2, w // 2) and y.dtype == dtype and y.device == x.device
    _expect_format(y, x)
    ref64 = haar_dwt2d_reference(x.double(), variant)
    _check_close_to_ref64(y, haar_dwt2d_reference(x, variant), ref64, x.abs().max().double())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_idwt_matches_reference(variant, dtype, layout, shape):
    n, c, hh, ww = shape
    y = _rand((n, 4 * c, hh // 2, ww // 2), dtype, layout)
    y_before = y.clone()
    x = haar_idwt2d(y, variant, backend="triton")
    assert torch.equal(y, y_before), "the input was modified"
    assert x.shape == (n, c, hh, ww) and x.dtype == dtype and x.device == y.device
    _expect_format(x, y)
    ref64 = haar_idwt2d_reference(y.double(), variant)
    _check_close_to_ref64(x, haar_idwt2d_reference(y, variant), ref64, y.abs().max().double())


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_float64(variant, layout):
    x = _rand((2, 4, 6, 20), torch.float64, layout)
    y = haar_dwt2d(x, variant, backend="triton")
    assert y.dtype == torch.float64
    _expect_format(y, x)
    torch.testing.assert_close(y, haar_dwt2d_reference(x, variant), rtol=1e-12, atol=1e-12)
    z = _rand((2, 8, 3, 10), torch.float64, layout)
    torch.testing.assert_close(haar_idwt2d(z, variant, backend="triton"), haar_idwt2d_reference(z, variant),
                               rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_round_trip(variant, dtype, layout):
    # Two roundings to `dtype` (bands, then pixels), each on values at most 2 max|x|:
    # |idwt(dwt(x)) - x| <= 3 eps max|x| in every convention. A wrong sign or scale is O(max|x|).
    for shape in [(2, 5, 10, 66), (1, 16, 8, 8)]:
        x = _rand(shape, dtype, layout)
        back = haar_idwt2d(haar_dwt2d(x, variant, backend="triton"), variant, backend="triton")
        assert back.shape == x.shape and back.dtype == dtype
        _expect_format(back, x)
        err = (back.double() - x.double()).abs().max().item()
        assert err <= 3 * EPS[dtype] * x.abs().max().item(), err
        y = _rand((shape[0], 4 * shape[1], shape[2] // 2, shape[3] // 2), dtype, layout)
        again = haar_dwt2d(haar_idwt2d(y, variant, backend="triton"), variant, backend="triton")
        err = (again.double() - y.double()).abs().max().item()
        assert err <= 3 * EPS[dtype] * y.abs().max().item(), err


# --------------------------------------------------------------------------------------------
# Layouts and views
# --------------------------------------------------------------------------------------------

def _views():
    """Inputs that are neither contiguous NCHW nor channels_last, plus two that are dense
    with unusual strides/offsets; each as a (name, x) pair of shape (B, C, H, W)."""
    base = torch.randn(2, 5, 12, 24, device=DEVICE)
    return [
        ("transposed", torch.randn(2, 3, 10, 6, device=DEVICE).transpose(2, 3)),          # (2, 3, 6, 10)
        ("sliced", base[:, 1:4, 2:8, ::2]),                                                 # (2, 3, 6, 12)
        ("channel-sliced-cl", torch.randn(2, 6, 8, 8, device=DEVICE)
         .contiguous(memory_format=torch.channels_last)[:, 1:5]),                          # (2, 4, 8, 8)
        ("offset-contiguous",                                                              # misaligned data_ptr
         torch.randn(2 * 3 * 6 * 8 + 1, device=DEVICE)[1:].view(2, 3, 6, 8)),
        ("permuted-nhwc", torch.randn(2, 6, 10, 5, device=DEVICE).permute(0, 3, 1, 2)),    # channels_last view
    ]


@pytest.mark.parametrize("variant", VARIANTS)
def test_non_contiguous_and_views(variant):
    for name, x in _views():
        x_before = x.clone()
        y = haar_dwt2d(x, variant, backend="triton")
        assert torch.equal(x, x_before), name
        _expect_format(y, x)
        torch.testing.assert_close(y.double(), haar_dwt2d_reference(x.double(), variant),
                                   rtol=1e-5, atol=1e-5 * x.abs().max().item(), msg=name)
        # The inverse on a non-dense view of the sub-bands.
        yv = torch.randn(y.shape[0], y.shape[1], y.shape[3], y.shape[2], device=DEVICE).transpose(2, 3)
        torch.testing.assert_close(haar_idwt2d(yv, variant, backend="triton").double(),
                                   haar_idwt2d_reference(yv.double(), variant),
                                   rtol=1e-5, atol=1e-5 * yv.abs().max().item(), msg=name)


def test_views_cover_both_paths():
    """The view list above really holds non-dense inputs and a channels_last one."""
    kinds = set()
    for _, x in _views():
        fmt = memory_format_of(x)
        kinds.add("cl" if fmt == torch.channels_last else "nchw" if x.is_contiguous() else "other")
    assert kinds == {"cl", "nchw", "other"}


# --------------------------------------------------------------------------------------------
# Wiring, autograd, index width
# --------------------------------------------------------------------------------------------

def test_backend_triton_runs_the_triton_ops():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Log(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    x = _rand((1, 2, 4, 6), torch.float32)
    y = _rand((1, 4, 2, 3), torch.float32)
    with Log() as log:
        haar_dwt2d(x, "invdn", backend="triton")
        haar_idwt2d(y, "mwcnn", backend="triton")
    assert log.ops == ["fastdenoise.haar_dwt2d_triton.default", "fastdenoise.haar_idwt2d_triton.default"]


def test_module_attributes():
    th = _th()
    assert th.DWT_NAME == "fastdenoise::haar_dwt2d_triton"
    assert th.IDWT_NAME == "fastdenoise::haar_idwt2d_triton"
    assert th.DWT_OP is torch.ops.fastdenoise.haar_dwt2d_triton
    assert th.IDWT_OP is torch.ops.fastdenoise.haar_idwt2d_triton
    # Same ids as the table in fastdenoise.ops.haar.
    x = _rand((2, 3, 4, 8), torch.float32)
    for name, (vid, *_rest) in H.VARIANTS.items():
        torch.testing.assert_close(th.haar_dwt2d(x, vid), haar_dwt2d_reference(x, name))


def test_bad_input_is_checked_before_the_kernel():
    with pytest.raises(errors.ShapeError):
        haar_dwt2d(_rand((1, 2, 5, 4), torch.float32), backend="triton")
    with pytest.raises(errors.ShapeError):
        haar_idwt2d(_rand((1, 6, 2, 2), torch.float32), backend="triton")
    with pytest.raises(errors.DTypeError):
        haar_dwt2d(torch.ones(1, 2, 4, 4, dtype=torch.int32, device=DEVICE), backend="triton")
    with pytest.raises(RuntimeError):   # the op's own check on the variant id
        _th().haar_dwt2d(_rand((1, 2, 4, 4), torch.float32), 3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcheck(variant):
    x = torch.randn(2, 2, 4, 6, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: haar_dwt2d(t, variant, backend="triton"), (x,))
    y = torch.randn(1, 8, 2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: haar_idwt2d(t, variant, backend="triton"), (y,))


@pytest.mark.parametrize("variant", VARIANTS)
def test_backward_matches_reference_channels_last(variant):
    x = _rand((2, 4, 6, 10), torch.float32, "channels_last").requires_grad_()
    xr = x.detach().clone().requires_grad_()
    g = torch.randn(2, 16, 3, 5, device=DEVICE)
    haar_dwt2d(x, variant, backend="triton").backward(g)
    haar_dwt2d_reference(xr, variant).backward(g)
    torch.testing.assert_close(x.grad, xr.grad)


def test_int64_flag_threshold():
    th = _th()
    for elt in (2, 4, 8):
        block = th._block_items(elt)
        assert not th._use_int64(1 << 20, block)
        assert not th._use_int64(th._INT32_MAX - 8 * block, block)
        assert th._use_int64(th._INT32_MAX - 8 * block + 1, block)
        assert th._use_int64(2**31, block)
        assert th._use_int64(3 * 2**31, block)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_int64_index_path(dtype, layout):
    """The INDEX64 kernels (forced on a small tensor) give the same bits as the int32 ones."""
    th = _th()
    x = _rand((2, 8, 6, 16), dtype, layout)
    y = _rand((2, 12, 5, 4), dtype, layout)
    for vid in range(3):
        y32 = th._dwt(x, vid)
        y64 = th._dwt(x, vid, force_int64=True)
        assert torch.equal(y64, y32)
        _check_close_to_ref64(y64, haar_dwt2d_reference(x, VARIANTS[vid]),
                              haar_dwt2d_reference(x.double(), VARIANTS[vid]), x.abs().max().double())
        assert torch.equal(th._idwt(y, vid, force_int64=True), th._idwt(y, vid))


# --------------------------------------------------------------------------------------------
# GPU only
# --------------------------------------------------------------------------------------------

@pytest.mark.cuda
@needs_compiled_triton
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_bfloat16_cuda(variant, layout):
    for shape in [(2, 3, 6, 34), (2, 16, 32, 64)]:
        x = _rand(shape, torch.bfloat16, layout, device="cuda")
        y = haar_dwt2d(x, variant, backend="triton")
        _expect_format(y, x)
        _check_close_to_ref64(y, haar_dwt2d_reference(x, variant), haar_dwt2d_reference(x.double(), variant),
                              x.abs().max().double())
        z = _rand(y.shape, torch.bfloat16, layout, device="cuda")
        back = haar_idwt2d(z, variant, backend="triton")
        _check_close_to_ref64(back, haar_idwt2d_reference(z, variant), haar_idwt2d_reference(z.double(), variant),
                              z.abs().max().double())


@pytest.mark.cuda
@needs_compiled_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck_cuda(layout, dtype):
    th = _th()
    x = _rand((2, 8, 6, 16), dtype, layout, device="cuda")
    y = _rand((2, 12, 3, 5), dtype, layout, device="cuda")
    for vid in range(3):
        torch.library.opcheck(th.DWT_OP, (x, vid))
        torch.library.opcheck(th.IDWT_OP, (y, vid))
    xg = _rand((1, 2, 4, 6), torch.float32, layout, device="cuda").requires_grad_()
    yg = _rand((1, 4, 2, 3), torch.float32, layout, device="cuda").requires_grad_()
    torch.library.opcheck(th.DWT_OP, (xg, 1))
    torch.library.opcheck(th.IDWT_OP, (yg, 2))


@pytest.mark.cuda
@needs_compiled_triton
@pytest.mark.parametrize("layout", LAYOUTS)
def test_compile_fullgraph_cuda(layout):
    # Start from a backend that was never loaded, so the compiled function makes the first call
    # (the import and the autograd registration must not break the graph).
    H._triton.reset()
    torch._dynamo.reset()

    def f(x):
        y = haar_dwt2d(x, "invdn", backend="triton")
        return haar_idwt2d(y * 1.5, "invdn", backend="triton") + haar_dwt2d(x, "mwcnn", backend="triton").sum()

    x = _rand((2, 6, 34, 66), torch.float32, layout, device="cuda")
    compiled = torch.compile(f, fullgraph=True)
    out = compiled(x)
    torch.testing.assert_close(out, f(x))
    _expect_format(out, x)
    # and backward through the compiled graph
    xg = x.detach().clone().requires_grad_()
    xr = x.detach().clone().requires_grad_()
    compiled(xg).square().sum().backward()
    f(xr).square().sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad)


@pytest.mark.cuda
@needs_compiled_triton
@pytest.mark.parametrize("layout", LAYOUTS)
def test_more_than_2_31_elements_cuda(layout):
    """64-bit offsets: a float16 input of > 2**31 elements; the last rows (offsets > 2**31)
    must match the reference run on those rows."""
    shape = (1, 1, 2**16 + 2, 2**15) if layout == "nchw" else (1, 4, 2**14 + 2, 2**15)
    numel = shape[0] * shape[1] * shape[2] * shape[3]
    assert numel > 2**31
    need = 3 * numel * 2 + (1 << 30)
    free, _ = torch.cuda.mem_get_info()
    if free < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    th = _th()
    x = torch.randn(shape, dtype=torch.float16, device="cuda")
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    y = haar_dwt2d(x, "orthonormal", backend="triton")
    assert th._use_int64(numel, th._block_items(2))
    for rows in (slice(0, 4), slice(shape[2] - 4, shape[2])):
        part = x[:, :, rows]
        sub = slice(rows.start // 2, rows.stop // 2)
        torch.testing.assert_close(y[:, :, sub], haar_dwt2d_reference(part, "orthonormal"))
    back = haar_idwt2d(y, "orthonormal", backend="triton")
    del y
    _expect_format(back, x)
    tail = (back[:, :, -4:].double() - x[:, :, -4:].double()).abs().max().item()
    assert tail <= 3 * EPS[torch.float16] * x[:, :, -4:].abs().max().item()
