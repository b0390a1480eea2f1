"""fastdenoise.ops.haar_dwt2d / haar_idwt2d: the reference against the definitions, every
backend against the reference, bad input, autograd, opcheck, compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastdenoise
from fastdenoise import errors
from fastdenoise.ops import haar_dwt2d, haar_dwt2d_reference, haar_idwt2d, haar_idwt2d_reference

VARIANTS = ("orthonormal", "invdn", "mwcnn")
HAVE_CPU_KERNEL = fastdenoise._ext.has_kernel("haar_dwt2d", "CPU")
SHAPES = [(1, 1, 2, 2), (3, 7, 6, 34), (2, 3, 66, 18), (1, 48, 8, 10)]


def _cpu_backend():
    if not HAVE_CPU_KERNEL:
        pytest.fail(f"the C++ CPU kernel is not built: {fastdenoise.build_info()}")
    return "cpu"


def _make(shape, dtype, channels_last, device="cpu"):
    x = torch.randn(shape, dtype=torch.float64, device=device).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _assert_close_to_ref(out, x, ref_fn, variant):
    """float32/64: relative error vs float64 reference; half types: at most 2x the error of the
    plain computation in the same dtype (DESIGN.md)."""
    ref64 = ref_fn(x.double(), variant)
    err = (out.double() - ref64).abs().max().item()
    scale = ref64.abs().max().item()
    if x.dtype == torch.float64:
        assert err <= 1e-12 * scale
    elif x.dtype == torch.float32:
        assert err <= 1e-5 * scale
    else:
        plain = _plain_same_dtype(x, ref_fn, variant)
        plain_err = (plain.double() - ref64).abs().max().item()
        assert err <= 2 * plain_err + 1e-6 * scale, (err, plain_err)


def _plain_same_dtype(x, ref_fn, variant):
    """The transform computed by plain PyTorch entirely in x's dtype (what an unfused model does)."""
    from fastdenoise.ops.haar import _variant
    _, signs, sf, si = _variant(variant)
    if ref_fn is haar_dwt2d_reference:
        a, b, c, d = x[:, :, 0::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 0::2], x[:, :, 1::2, 1::2]
        return torch.cat([(s[0] * a + s[1] * b + s[2] * c + s[3] * d) * sf for s in signs], 1)
    n, c4, h, w = x.shape
    bands = x.split(c4 // 4, 1)
    out = x.new_empty((n, c4 // 4, 2 * h, 2 * w))
    for pos, (p, q) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        out[:, :, p::2, q::2] = sum(signs[k][pos] * bands[k] for k in range(4)) * si
    return out


# ---------------------------------------------------------------- the reference is the definition

def test_reference_matches_published_conventions():
    a, b, c, d = 1.0, 2.0, 4.0, 8.0
    x = torch.tensor([[[[a, b], [c, d]]]], dtype=torch.float64)
    # PyWavelets dwt2(x, "haar"): cA, cH, cV, cD.
    ortho = haar_dwt2d_reference(x, "orthonormal").flatten().tolist()
    assert ortho == [(a + b + c + d) / 2, (a + b - c - d) / 2, (a - b + c - d) / 2, (a - b - c + d) / 2]
    # MWCNN dwt_init: x1 = even row/even col, x2 = odd row/even col, x3 = even row/odd col, x4.
    x1, x2, x3, x4 = a / 2, c / 2, b / 2, d / 2
    mw = haar_dwt2d_reference(x, "mwcnn").flatten().tolist()
    assert mw == [x1 + x2 + x3 + x4, -x1 - x2 + x3 + x4, -x1 + x2 - x3 + x4, x1 - x2 - x3 + x4]


@pytest.mark.parametrize("channels", [1, 3, 5])
def test_reference_invdn_is_the_grouped_conv(channels):
    x = torch.randn(2, channels, 10, 6, dtype=torch.float64)
    w = torch.ones(4, 1, 2, 2, dtype=torch.float64)
    w[1, 0, 0, 1] = w[1, 0, 1, 1] = -1
    w[2, 0, 1, 0] = w[2, 0, 1, 1] = -1
    w[3, 0, 1, 0] = w[3, 0, 0, 1] = -1
    w = torch.cat([w] * channels, 0)
    conv = F.conv2d(x, w, stride=2, groups=channels) / 4.0
    conv = conv.reshape(2, channels, 4, 5, 3).transpose(1, 2).reshape(2, 4 * channels, 5, 3)
    torch.testing.assert_close(haar_dwt2d_reference(x, "invdn"), conv, rtol=0, atol=1e-14)
    # and the inverse is the transposed convolution of the band-interleaved tensor
    y = torch.randn(2, 4 * channels, 5, 3, dtype=torch.float64)
    inter = y.reshape(2, 4, channels, 5, 3).transpose(1, 2).reshape(2, 4 * channels, 5, 3)
    tconv = F.conv_transpose2d(inter, w, stride=2, groups=channels)
    torch.testing.assert_close(haar_idwt2d_reference(y, "invdn"), tconv, rtol=0, atol=1e-14)


def test_orthonormal_preserves_energy():
    x = torch.randn(2, 3, 12, 8, dtype=torch.float64)
    y = haar_dwt2d_reference(x, "orthonormal")
    torch.testing.assert_close(y.norm(), x.norm(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_reference_round_trip(variant):
    x = torch.randn(2, 5, 14, 22, dtype=torch.float64)
    torch.testing.assert_close(haar_idwt2d_reference(haar_dwt2d_reference(x, variant), variant), x,
                               rtol=0, atol=1e-13)


# ---------------------------------------------------------------- the C++ CPU kernel

@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_cpu_kernel_matches_reference(variant, dtype, channels_last, shape):
    be = _cpu_backend()
    x = _make(shape, dtype, channels_last)
    before = x.clone()
    y = haar_dwt2d(x, variant, backend=be)
    assert y.shape == (shape[0], 4 * shape[1], shape[2] // 2, shape[3] // 2)
    assert y.dtype == dtype and y.device == x.device
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt)
    _assert_close_to_ref(y, x, haar_dwt2d_reference, variant)
    z = haar_idwt2d(y, variant, backend=be)
    assert z.shape == x.shape and z.is_contiguous(memory_format=fmt)
    _assert_close_to_ref(z, y, haar_idwt2d_reference, variant)
    assert torch.equal(x, before), "input modified in place"


@pytest.mark.parametrize("variant", VARIANTS)
def test_cpu_kernel_round_trip_float32(variant):
    x = torch.randn(3, 4, 30, 14)
    z = haar_idwt2d(haar_dwt2d(x, variant, backend=_cpu_backend()), variant, backend="cpu")
    torch.testing.assert_close(z, x, rtol=1e-6, atol=1e-6)


def test_cpu_kernel_non_contiguous_inputs():
    be = _cpu_backend()
    base = torch.randn(2, 6, 20, 30)
    views = [base[:, ::2], base[..., 2:26], base.transpose(2, 3), base[:, 1:4, 2:10, 4:12]]
    for x in views:
        assert not x.is_contiguous()
        torch.testing.assert_close(haar_dwt2d(x, "mwcnn", backend=be),
                                   haar_dwt2d_reference(x, "mwcnn"), rtol=1e-6, atol=1e-6)
    y = torch.randn(2, 12, 9, 7).transpose(2, 3)
    torch.testing.assert_close(haar_idwt2d(y, "invdn", backend=be), haar_idwt2d_reference(y, "invdn"),
                               rtol=1e-6, atol=1e-6)


def test_cpu_kernel_misaligned_storage():
    """A view starting one element into its storage (the vector paths must not assume alignment)."""
    flat = torch.randn(1 + 2 * 3 * 8 * 12)
    x = flat[1:].view(2, 3, 8, 12)
    torch.testing.assert_close(haar_dwt2d(x, backend=_cpu_backend()), haar_dwt2d_reference(x), rtol=1e-6, atol=1e-6)


def test_default_dispatch_uses_cpu_kernel_and_env_override(monkeypatch):
    from fastdenoise import _dispatch
    x = torch.randn(1, 2, 4, 4)
    monkeypatch.delenv("FASTDENOISE_BACKEND", raising=False)
    assert _dispatch.resolve("haar_dwt2d", x, None) == ("cpu" if HAVE_CPU_KERNEL else "reference")
    monkeypatch.setenv("FASTDENOISE_BACKEND", "reference")
    assert _dispatch.resolve("haar_dwt2d", x, None) == "reference"
    monkeypatch.setenv("FASTDENOISE_BACKEND", "gpu")
    with pytest.raises(ValueError, match="backend"):
        haar_dwt2d(x)


# ---------------------------------------------------------------- autograd, opcheck, compile

@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_gradcheck(variant, backend):
    if backend == "cpu":
        _cpu_backend()
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 8, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: haar_dwt2d(t, variant, backend=backend), (x,))
    assert torch.autograd.gradcheck(lambda t: haar_idwt2d(t, variant, backend=backend), (y,))


@pytest.mark.parametrize("variant", [0, 1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck_cpu(variant, channels_last):
    _cpu_backend()
    x = _make((2, 3, 6, 8), torch.float32, channels_last).requires_grad_()
    y = _make((2, 12, 3, 5), torch.float32, channels_last).requires_grad_()
    torch.library.opcheck(torch.ops.fastdenoise.haar_dwt2d.default, (x, variant))
    torch.library.opcheck(torch.ops.fastdenoise.haar_idwt2d.default, (y, variant))


def test_compile_fullgraph_cpu():
    _cpu_backend()

    def f(x):
        return haar_idwt2d(haar_dwt2d(x, "invdn") * 2.0, "invdn")

    x = torch.randn(2, 3, 8, 6)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), f(x))


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("fn,name", [(haar_dwt2d, "x"), (haar_idwt2d, "y")])
def test_bad_input(fn, name):
    good = torch.randn(1, 4, 4, 4)
    with pytest.raises(errors.ShapeError, match=rf"{name}: expected 4 dims .*got 3: \[4, 4, 4\]"):
        fn(good[0])
    with pytest.raises(errors.DTypeError, match=rf"{name}: expected dtype .*got int64"):
        fn(torch.ones(1, 4, 4, 4, dtype=torch.int64))
    with pytest.raises(errors.DTypeError, match=rf"{name}: .*got bool"):
        fn(torch.ones(1, 4, 4, 4, dtype=torch.bool))
    with pytest.raises(errors.ShapeError, match=rf"{name}: expected a non-empty tensor"):
        fn(torch.randn(0, 4, 4, 4))
    with pytest.raises(errors.ShapeError, match=rf"{name}: expected a non-empty tensor"):
        fn(torch.randn(1, 4, 0, 4))
    with pytest.raises(TypeError, match=rf"{name}: expected a torch.Tensor"):
        fn(good.numpy())
    with pytest.raises(ValueError, match="variant: expected one of"):
        fn(good, "db2")
    with pytest.raises(ValueError, match="backend: expected one of"):
        fn(good, backend="opencl")
    with pytest.raises(errors.DeviceError, match="backend='cuda': expected a tensor on cuda, got cpu"):
        fn(good, backend="cuda")
    if not fastdenoise._dispatch.triton_interpret():
        with pytest.raises(errors.DeviceError, match="backend='triton'"):
            fn(good, backend="triton")
    # ValueError / TypeError compatibility of the typed errors
    assert issubclass(errors.ShapeError, ValueError) and issubclass(errors.DTypeError, TypeError)


def test_bad_sizes():
    with pytest.raises(errors.ShapeError, match=r"x: expected even H and W .*got H=5, W=4: \[1, 2, 5, 4\]"):
        haar_dwt2d(torch.randn(1, 2, 5, 4))
    with pytest.raises(errors.ShapeError, match=r"x: expected even H and W .*got H=4, W=7"):
        haar_dwt2d(torch.randn(1, 2, 4, 7))
    with pytest.raises(errors.ShapeError, match=r"y: expected a channel count divisible by 4 .*got C=6"):
        haar_idwt2d(torch.randn(1, 6, 4, 4))


# ---------------------------------------------------------------- CUDA (GPU machine only)

@pytest.mark.cuda
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", SHAPES + [(2, 8, 34, 132)])
def test_cuda_kernel_matches_reference(variant, dtype, channels_last, shape):
    x = _make(shape, dtype, channels_last, device="cuda")
    before = x.clone()
    y = haar_dwt2d(x, variant, backend="cuda")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt) and y.dtype == dtype and y.device == x.device
    _assert_close_to_ref(y, x, haar_dwt2d_reference, variant)
    z = haar_idwt2d(y, variant, backend="cuda")
    assert z.is_contiguous(memory_format=fmt)
    _assert_close_to_ref(z, y, haar_idwt2d_reference, variant)
    assert torch.equal(x, before)


@pytest.mark.cuda
def test_cuda_default_dispatch_and_misaligned_views():
    flat = torch.randn(1 + 2 * 8 * 8 * 16, device="cuda", dtype=torch.float16)
    x = flat[1:].view(2, 8, 8, 16)  # 2-byte aligned only: the scalar path
    torch.testing.assert_close(haar_dwt2d(x), haar_dwt2d_reference(x), rtol=0, atol=0)
    xs = torch.randn(2, 6, 20, 30, device="cuda")[:, ::2]
    torch.testing.assert_close(haar_dwt2d(xs, "invdn"), haar_dwt2d_reference(xs, "invdn"), rtol=1e-6, atol=1e-6)


@pytest.mark.cuda
def test_cuda_opcheck_and_compile():
    for cl in (False, True):
        x = _make((2, 3, 6, 8), torch.float32, cl, device="cuda").requires_grad_()
        y = _make((2, 12, 3, 5), torch.float32, cl, device="cuda").requires_grad_()
        for v in (0, 1, 2):
            torch.library.opcheck(torch.ops.fastdenoise.haar_dwt2d.default, (x, v))
            torch.library.opcheck(torch.ops.fastdenoise.haar_idwt2d.default, (y, v))

    def f(t):
        return haar_idwt2d(haar_dwt2d(t, "mwcnn") * 0.5, "mwcnn")

    t = torch.randn(2, 16, 64, 48, device="cuda", dtype=torch.float16)
    torch.testing.assert_close(torch.compile(f, fullgraph=True)(t), f(t))


@pytest.mark.cuda
def test_cuda_64bit_indexing():
    free, _ = torch.cuda.mem_get_info()
    shape = (1, 1, 2**16, 2**15 + 64)  # > 2**31 elements
    need = 2 * 2 * shape[2] * shape[3] * 2  # in + out, float16, plus the check slices
    if free < need + 2**30:
        pytest.fail(f"needs {need / 2**30:.1f} GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    x = torch.randn(shape, device="cuda", dtype=torch.float16)
    y = haar_dwt2d(x, "orthonormal", backend="cuda")
    tail = x[..., -4:, -8:]
    ref = haar_dwt2d_reference(tail, "orthonormal")
    got = y[:, :, -2:, -4:]
    torch.testing.assert_close(got.float(), ref.float(), rtol=0, atol=2e-3)
