"""fastdenoise.StreamDenoiser: frames as host uint8 / uint16 arrays (grey and colour) or device
tensors give the model's output, converted as documented, in order; errors; on a GPU the
pipelined path (streams, double buffers, CUDA graphs) against the plain model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastdenoise import StreamDenoiser
from fastdenoise.errors import DeviceError, DTypeError, ShapeError
from fastdenoise.models import DnCNN, NAFNet


def _model(c=3, seed=0):
    torch.manual_seed(seed)
    return DnCNN(in_nc=c, out_nc=c, nc=8, nb=3).eval()


def _expected(model, frame, dtype=torch.float32):
    full = 255.0 if frame.dtype == np.uint8 else 65535.0
    arr = frame if frame.ndim == 3 else frame[:, :, None]
    x = (torch.from_numpy(arr.astype(np.float32)).permute(2, 0, 1)[None] / full).to(dtype)
    m = model.to(dtype)
    with torch.no_grad():
        y = m(x.contiguous(memory_format=torch.channels_last)).float().clamp(0, 1) * full
    return y.round()[0].permute(1, 2, 0).numpy().astype(frame.dtype).reshape(frame.shape)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("c", [1, 3])
def test_host_frames_in_order(dtype, c):
    model = _model(c)
    rng = np.random.default_rng(c)
    top = np.iinfo(dtype).max
    shape = (17, 23, c) if c == 3 else (17, 23)
    frames = [(rng.random(shape) * top).astype(dtype) for _ in range(4)]
    s = StreamDenoiser(model, shape, torch.float32)
    outs = list(s.stream(frames))
    assert len(outs) == 4
    for f, o in zip(frames, outs):
        assert o.dtype == f.dtype and o.shape == f.shape
        assert np.abs(o.astype(np.int64) - _expected(model, f).astype(np.int64)).max() <= 1
    assert np.array_equal(s(frames[2]), outs[2])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bright_16_bit_frames_in_half_precision(dtype):
    """A 16-bit frame with samples up to 65535 in float16 (whose largest finite value is 65504):
    scaled to [0, 1] before the model's dtype, so no sample becomes inf and the output is the
    float32 one to the dtype's precision (it once came back as black patches)."""
    model = _model(1)
    frame = np.full((16, 16), 30000, np.uint16)
    frame[8, 8] = 65535
    frame[3, 4] = 65520
    got = StreamDenoiser(model, frame.shape, dtype)(frame).astype(np.int64)
    want = _expected(model, frame).astype(np.int64)
    assert np.abs(got - want).max() <= 65535 * (2e-2 if dtype == torch.bfloat16 else 2e-3)
    assert (got > 20000).all()


def test_device_tensor_frames():
    model = _model()
    s = StreamDenoiser(model, (12, 10, 3), torch.bfloat16)
    x = torch.rand(3, 12, 10)
    y = s(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert next(model.parameters()).dtype == torch.float32           # the caller's model untouched
    with torch.no_grad():
        want = model.to(torch.bfloat16)(x[None].to(torch.bfloat16))[0].float()
    torch.testing.assert_close(y, want)
    assert s(x[None]).shape == (1, 3, 12, 10)


def test_model_copy_and_in_place():
    """The default copy: the caller's model keeps its dtype, layout and mode; the copy's tensors
    are converted (floating ones to the dtype, 4-D ones channels_last, integer buffers kept),
    hold their own memory, and tensors shared in the model stay shared. copy=False converts
    the caller's model itself; both give the same frames."""
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    other = torch.nn.Conv2d(3, 3, 3, padding=1)
    other.weight = conv.weight                                      # a tied parameter
    model = torch.nn.Sequential(conv, torch.nn.BatchNorm2d(3), torch.nn.ReLU(), other, conv)
    model[1].running_mean.uniform_(-0.1, 0.1)
    model.train()
    s = StreamDenoiser(model, (6, 7, 3), torch.bfloat16)
    c = s.model
    assert model.training and all(p.dtype == torch.float32 for p in model.parameters())
    assert conv.weight.is_contiguous() and model[1].num_batches_tracked.dtype == torch.int64
    assert c is not model and not c.training
    assert c[0] is c[4] and c[3].weight is c[0].weight                # sharing kept
    w = c[0].weight
    assert w.dtype == torch.bfloat16 and w.is_contiguous(memory_format=torch.channels_last)
    assert w.data_ptr() != conv.weight.data_ptr() and torch.equal(w, conv.weight.detach().bfloat16())
    assert c[1].running_mean.dtype == torch.bfloat16 and c[1].num_batches_tracked.dtype == torch.int64
    assert torch.equal(c[1].running_mean, model[1].running_mean.bfloat16())
    frame = (np.random.default_rng(3).random((6, 7, 3)) * 255).astype(np.uint8)
    out = s(frame)
    s2 = StreamDenoiser(model, (6, 7, 3), torch.bfloat16, copy=False)
    assert s2.model is model and not model.training and conv.weight.dtype == torch.bfloat16
    assert np.array_equal(s2(frame), out)


def test_model_copy_never_duplicates_weights_at_full_precision(monkeypatch):
    """The copy makes each tensor once, converted: no tensor goes through deepcopy (which would
    first duplicate it in its own dtype on its own device)."""
    def refuse(self, memo):
        raise AssertionError(f"a {self.dtype} tensor of {list(self.shape)} was deep-copied")

    monkeypatch.setattr(torch.nn.Parameter, "__deepcopy__", refuse)
    monkeypatch.setattr(torch.Tensor, "__deepcopy__", refuse)
    model = NAFNet(img_channel=3, width=4, enc_blk_nums=[1], dec_blk_nums=[1]).eval()
    s = StreamDenoiser(model, (8, 8, 3), torch.float16)
    assert all(p.dtype == torch.float16 for p in s.model.parameters())


def test_list_output_models_and_nafnet():
    model = NAFNet(img_channel=3, width=4, enc_blk_nums=[1], dec_blk_nums=[1]).eval()
    frame = (np.random.default_rng(1).random((9, 14, 3)) * 255).astype(np.uint8)
    out = StreamDenoiser(lambda x: [model(x)], (9, 14, 3), torch.float32)(frame)
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert np.array_equal(out, StreamDenoiser(model, (9, 14, 3), torch.float32)(frame))


def test_bad_input():
    s = StreamDenoiser(_model(), (8, 8, 3), torch.float32)
    with pytest.raises(ShapeError, match=r"frame: expected an array of shape \[8, 8, 3\], got \[8, 9, 3\]"):
        s(np.zeros((8, 9, 3), np.uint8))
    with pytest.raises(DTypeError, match="frame: expected a uint8 or uint16 array, got float32"):
        s(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(DTypeError, match="frame: expected a float16, bfloat16 or float32 tensor"):
        s(torch.zeros(3, 8, 8, dtype=torch.float64))
    with pytest.raises(TypeError, match="frame: expected a numpy array or a torch.Tensor, got list"):
        s([1, 2])
    with pytest.raises(ShapeError, match="shape: expected"):
        StreamDenoiser(_model(), (8, 8, 2))
    for bad in ((8.7, 9.2, 3), "893", (8, True, 3)):       # not truncated, not read digit by digit
        with pytest.raises(ShapeError, match=r"shape: expected \(H, W, C\) or \(H, W\) of integers"):
            StreamDenoiser(_model(), bad)
    # a model that does not keep the size: a typed error naming the model, host and device frames
    crop = StreamDenoiser(lambda t: t[..., 1:, :], (8, 9, 3), torch.float32)
    with pytest.raises(ShapeError, match=r"model: expected an output of the frame's shape \[1, 3, 8, 9\].*"
                                         r"got \[1, 3, 7, 9\]"):
        crop(np.zeros((8, 9, 3), np.uint8))
    with pytest.raises(ShapeError, match="model: expected an output of the frame's shape"):
        crop(torch.zeros(3, 8, 9))


def test_callers_tensor_never_reaches_the_model():
    """A float32 channels_last frame needs no conversion: the model still gets a copy, so an
    in-place model leaves the caller's frame alone and an identity model returns new storage."""
    def in_place(t):
        return t.mul_(0.5)
    frame = torch.rand(1, 1, 8, 9)
    before = frame.clone()
    out = StreamDenoiser(in_place, (8, 9, 1), torch.float32)(frame)
    assert torch.equal(frame, before)
    torch.testing.assert_close(out, before * 0.5)
    same = StreamDenoiser(lambda t: t, (8, 9, 1), torch.float32)(frame)
    assert torch.equal(same, frame) and same.data_ptr() != frame.data_ptr()
    with pytest.raises(DTypeError, match="dtype: expected one of"):
        StreamDenoiser(_model(), (8, 8, 3), torch.float64)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="torch sees no CUDA device"):
            StreamDenoiser(_model(), (8, 8, 3), device="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("graphs", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_pipeline_matches_the_model(graphs, dtype):
    model = _model().cuda()
    rng = np.random.default_rng(2)
    frames = [(rng.random((64, 96, 3)) * 255).astype(np.uint8) for _ in range(7)]
    s = StreamDenoiser(model, (64, 96, 3), dtype, graphs=graphs)
    outs = list(s.stream(frames))
    cpu_model = _model()
    for f, o in zip(frames, outs):
        want = _expected(cpu_model, f)
        assert np.abs(o.astype(int) - want.astype(int)).max() <= 2       # float16 vs float32 levels
    assert next(model.parameters()).dtype == torch.float32           # the caller's model untouched
    t = torch.rand(3, 64, 96, device="cuda")
    assert s(t).device.type == "cuda"
