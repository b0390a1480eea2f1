"""The edge checks of every fused block: a wrong channel count, device or dtype is a typed error
naming ``x``, the block and what it expected, raised before any op runs (the ops would otherwise
blame their weight arguments, and the convolutions raise untyped RuntimeErrors)."""

from __future__ import annotations

import pytest
import torch

from fastdenoise import errors
from fastdenoise import nn as fnn

C = 8

# (name, constructor, whether the block has convolutions before its fused ops and so needs x in
# the parameters' dtype, as the official block does)
BLOCKS = [
    ("MPRNetCALayer", lambda: fnn.MPRNetCALayer(C, 4), False),
    ("CAB", lambda: fnn.CAB(C, 3, 4, False, torch.nn.PReLU()), True),
    ("RIDNetCALayer", lambda: fnn.RIDNetCALayer(C, 4), False),
    ("LayerNorm2d", lambda: fnn.LayerNorm2d(C), False),
    ("RestormerLayerNorm", lambda: fnn.RestormerLayerNorm(C, "BiasFree"), False),
    ("RestormerLayerNorm", lambda: fnn.RestormerLayerNorm(C, "WithBias"), False),
    ("NAFBlock", lambda: fnn.NAFBlock(C), True),
    ("BaselineBlock", lambda: fnn.BaselineBlock(C), True),
    ("MDTA", lambda: fnn.MDTA(C, 2, False), True),
    ("MDTA", lambda: fnn.MDTA(C, 2, True, fuse_input=True), True),
    ("GDFN", lambda: fnn.GDFN(C, 2.66, False), True),
    ("TransformerBlock", lambda: fnn.TransformerBlock(C, 2, 2.66, False, "BiasFree"), True),
]
IDS = [f"{n}-{i}" for i, (n, _, _) in enumerate(BLOCKS)]


def _fresh(make):
    torch.manual_seed(0)
    m = make().eval()
    with torch.no_grad():              # non-trivial parameters (the blocks' zero-initialised
        for p in m.parameters():       # gains would hide most of the maths)
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 else 0.0))
    return m


@pytest.mark.parametrize("name,make,convs", BLOCKS, ids=IDS)
@pytest.mark.parametrize("c", [C - 1, C + 2, 1])
def test_wrong_channel_count_names_x_and_the_block(name, make, convs, c):
    m = _fresh(make)
    x = torch.randn(2, c, 5, 7)
    before = x.clone()
    with pytest.raises(errors.ShapeError, match=rf"^x: expected {C} channels \(the channel count of {name}\), "
                                                rf"got C={c}: \[2, {c}, 5, 7\]$"):
        m(x)
    assert torch.equal(x, before)


@pytest.mark.parametrize("name,make,convs", BLOCKS, ids=IDS)
def test_wrong_device_names_x_and_the_block(name, make, convs):
    m = _fresh(make)
    with pytest.raises(errors.DeviceError, match=rf"^x: expected a tensor on cpu \(the device of {name}'s "
                                                 rf"parameters\), got meta$"):
        m(torch.empty(1, C, 4, 4, device="meta"))


@pytest.mark.parametrize("name,make,convs", BLOCKS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtype(name, make, convs, dtype):
    """Blocks with convolutions want x in their parameters' dtype outside autocast (a typed error
    where the official raise a RuntimeError); the attention and norm layers take any float input
    and compute in its dtype, as the official norms do (type promotion)."""
    m = _fresh(make)
    x = torch.randn(2, C, 5, 7)
    xd = x.to(dtype)
    short = str(dtype).replace("torch.", "")
    if convs:
        with pytest.raises(errors.DTypeError, match=rf"^x: expected dtype float32 \(the dtype of {name}'s "
                                                    rf"parameters\), got {short}$"):
            m(xd)
        return
    with torch.no_grad():
        got = m(xd)
        want = m.double()(x.double())
    assert got.dtype == dtype
    tol = {torch.float64: 1e-10, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("name,make,convs", [b for b in BLOCKS if b[2]], ids=[i for i, b in zip(IDS, BLOCKS) if b[2]])
def test_autocast_takes_a_float32_input(name, make, convs):
    """Under autocast the convolutions choose the dtype: no dtype error, and the output is close
    to the float32 one."""
    m = _fresh(make)
    x = torch.randn(1, C, 6, 5)
    with torch.no_grad():
        want = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = m(x)
    assert got.shape == want.shape
    scale = want.abs().max().item()
    assert (got.float() - want).abs().max().item() <= 0.1 * scale


@pytest.mark.parametrize("name,make,convs", BLOCKS, ids=IDS)
def test_not_a_float_tensor(name, make, convs):
    m = _fresh(make)
    with pytest.raises(TypeError, match=r"^x: expected a torch.Tensor \(B, C, H, W\), got list$"):
        m([1.0])
    with pytest.raises(errors.DTypeError, match=r"^x: expected dtype in \(float32, float16, bfloat16, float64\), "
                                                r"got int32$"):
        m(torch.ones(1, C, 4, 4, dtype=torch.int32))
    with pytest.raises(errors.ShapeError, match=r"^x: expected 4 dims \(B, C, H, W\), got 3: \[8, 4, 4\]$"):
        m(torch.randn(C, 4, 4))
