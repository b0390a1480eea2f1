"""fastdenoise.tiled: the grid and the blending windows, exactness for local models with
``blend="crop"``, the seam error against the overlap with ``"hann"``, any size, alignment to the
model's factor, extra per-image arguments, list outputs, dtypes and memory formats, errors;
on a GPU: a host-resident image with the model on the GPU, and the out-of-memory retry."""

from __future__ import annotations

import re

import pytest
import torch

import fastdenoise
from fastdenoise.models import DnCNN, FFDNet, MPRNet, NAFNet
from fastdenoise.tiling import axis_windows, default_overlap, model_multiple, tile_starts


def _rand_weights(model, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif p.dim() == 4:
                fan_in = p.shape[1] * p.shape[2] * p.shape[3]
                p.copy_(scale * torch.randn(p.shape, generator=g) / fan_in ** 0.5)
    return model.eval()


def _img(b, c, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, h)[:, None] * torch.linspace(1, 0, w)[None, :]
    return 0.6 * ramp * torch.rand(b, c, 1, 1, generator=g) + 0.4 * torch.rand(b, c, h, w, generator=g)


# --------------------------------------------------------------------------------------------
# Grid and windows
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, tile, overlap, m", [(100, 32, 8, 1), (20, 32, 8, 1), (64, 16, 4, 4), (257, 64, 30, 8)])
def test_tile_starts_cover_the_axis(n, tile, overlap, m):
    n = -(-n // m) * m
    length, starts = tile_starts(n, tile, overlap, m)
    assert starts[0] == 0 and starts[-1] + length == n and length <= max(tile, n)
    assert all(s % m == 0 for s in starts) and length % m == 0
    assert all(b - a <= length - overlap or len(starts) == 1 for a, b in zip(starts, starts[1:]))
    assert sorted(set(starts)) == starts


@pytest.mark.parametrize("blend", ["hann", "crop"])
def test_windows_sum_to_one(blend):
    length, starts = tile_starts(90, 32, 12)                   # stride 20 >= half the tile: pairs only
    total = torch.zeros(90, dtype=torch.float64)
    for s, w in zip(starts, axis_windows(starts, length, blend)):
        assert w.dtype == torch.float32 and w.shape == (length,)
        total[s:s + length] += w.double()
    torch.testing.assert_close(total, torch.ones(90, dtype=torch.float64), rtol=0, atol=1e-6)
    ws = axis_windows(starts, length, blend)
    assert ws[0][0] == 1 and ws[-1][-1] == 1                      # no fade at the image borders
    if blend == "crop":
        assert set(torch.cat(ws).tolist()) == {0.0, 1.0}


def test_model_facts():
    assert model_multiple(NAFNet(width=4, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])) == 4
    assert model_multiple(MPRNet(n_feat=8, scale_unetfeats=4, scale_orsnetfeats=4, num_cab=1)) == 8
    assert model_multiple(DnCNN(nc=8, nb=5)) == 1 and model_multiple(FFDNet(nc=8, nb=3)) == 2
    assert default_overlap(DnCNN(nc=8, nb=17), 512) == 72          # radius 17 -> 68 -> 72
    assert default_overlap(DnCNN(nc=8, nb=17), 48) == 40           # at most the tile less 8
    assert default_overlap(NAFNet(width=4), 512) == 64


# --------------------------------------------------------------------------------------------
# Exactness and seams
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("hw", [(37, 53), (16, 70), (5, 3)])
def test_crop_and_hann_are_exact_for_a_local_model(hw):
    """DnCNN with 5 layers (receptive-field radius 5): crop needs an overlap of 10, hann 20 (its
    fade avoids the outer quarter of the overlap); the default overlap (24) serves both."""
    model = _rand_weights(DnCNN(in_nc=1, out_nc=1, nc=8, nb=5, act_mode="R"), 1)
    x = _img(2, 1, *hw, seed=2)
    with torch.no_grad():
        want = model(x)
        got = fastdenoise.tiled(model, tile=16, overlap=10, blend="crop")(x)
        got_hann = fastdenoise.tiled(model, tile=24, overlap=20, blend="hann")(x)
        got_default = fastdenoise.tiled(model, tile=32)(x)
        too_small = fastdenoise.tiled(model, tile=16, overlap=4, blend="crop")(x)
    assert got.shape == want.shape and got.dtype == want.dtype
    for y in (got, got_hann, got_default):
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    if max(hw) > 16:
        assert (too_small - want).abs().max() > 1e-3               # the check can fail


def test_hann_seam_error_falls_with_the_overlap():
    """A model with global statistics (NAFNet's channel attention): tiles see other means, so
    tiled != untiled; the error shrinks as the overlap grows."""
    torch.manual_seed(0)
    model = _rand_weights(NAFNet(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1, 1],
                                 dec_blk_nums=[1, 1]), 3, scale=2.0)
    x = _img(1, 3, 64, 96, seed=4)
    with torch.no_grad():
        want = model(x)
        errs = {ov: (fastdenoise.tiled(model, tile=48, overlap=ov)(x) - want).abs().mean().item()
                for ov in (4, 16, 40)}
        avg = (fastdenoise.tiled(model, tile=48, overlap=16, blend="average")(x) - want).abs().mean().item()
    assert errs[40] < errs[16] < errs[4]
    assert errs[16] <= avg


def test_any_size_alignment_batches_and_layouts():
    model = _rand_weights(NAFNet(img_channel=3, width=4, middle_blk_num=1, enc_blk_nums=[1, 1],
                                 dec_blk_nums=[1, 1]), 5)
    t = fastdenoise.tiled(model, tile=12, overlap=4, batch=3, progress=False)
    assert t.multiple == 4 and "multiple=4" in repr(t)
    for hw in ((1, 1), (2, 9), (13, 30)):
        x = _img(2, 3, *hw, seed=hw[1])
        before = x.clone()
        with torch.no_grad():
            y = t(x)
            y_cl = t(x.contiguous(memory_format=torch.channels_last))
            y16 = t(x.to(torch.bfloat16))
            alone = torch.cat([t(x[:1]), t(x[1:])])
        assert y.shape == x.shape and torch.equal(x, before)
        assert y_cl.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y_cl, y, rtol=1e-5, atol=1e-5)
        # the tiles of both images share forwards (batch=3): each image as if tiled alone
        torch.testing.assert_close(alone, y, rtol=1e-5, atol=1e-5)
        # bfloat16 through the same tiles: within its rounding (measured up to 1.1% of max |y|)
        assert y16.dtype == torch.bfloat16
        assert (y16.float() - y).abs().max() <= 0.03 * y.abs().max()


def test_single_tile_equals_the_model():
    model = _rand_weights(NAFNet(img_channel=3, width=4, enc_blk_nums=[1], dec_blk_nums=[1]), 6)
    x = _img(1, 3, 20, 18, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(fastdenoise.tiled(model, tile=64)(x), model(x), rtol=1e-6, atol=1e-6)


def test_per_image_arguments_and_list_outputs():
    ffd = _rand_weights(FFDNet(in_nc=1, out_nc=1, nc=8, nb=3), 8)
    x = _img(2, 1, 30, 26, seed=9)
    sigma = torch.tensor([0.05, 0.2]).view(2, 1, 1, 1)
    with torch.no_grad():
        want = ffd(x, sigma)
        got = fastdenoise.tiled(ffd, tile=16, overlap=12, blend="crop", batch=4)(x, sigma)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # MPRNet returns a list of its three stages' outputs: the first is the image. One tile covering
    # the image (padded to MPRNet's factor 8, as MPRNet pads it itself) gives MPRNet's output
    mpr = _rand_weights(MPRNet(n_feat=8, scale_unetfeats=4, scale_orsnetfeats=4, num_cab=1), 10)
    x = _img(1, 3, 20, 27, seed=11)
    with torch.no_grad():
        torch.testing.assert_close(fastdenoise.tiled(mpr, tile=64, overlap=8)(x), mpr(x)[0], rtol=1e-5, atol=1e-5)
        y = fastdenoise.tiled(mpr, tile=16, overlap=8)(x)
    assert y.shape == (1, 3, 20, 27) and torch.isfinite(y).all()


def test_progress_counter(capsys, monkeypatch):
    import fastdenoise.tiling as T
    clock = iter(range(0, 1000, 5))
    monkeypatch.setattr(T.time, "monotonic", lambda: next(clock))
    model = DnCNN(in_nc=1, out_nc=1, nc=4, nb=2).eval()
    with torch.no_grad():
        fastdenoise.tiled(model, tile=8, overlap=4)(torch.rand(1, 1, 20, 20))
        assert "tiles" in capsys.readouterr().err
        fastdenoise.tiled(model, tile=8, overlap=4, progress=False)(torch.rand(1, 1, 20, 20))
        assert capsys.readouterr().err == ""
    # Redrawn at most every PROGRESS_INTERVAL seconds, the last count always: 81 tiles (one clock
    # reading each, 0.1 s apart: 8.1 s), drawn from 2 s on.
    ticks = iter(range(10 ** 6))
    monkeypatch.setattr(T.time, "monotonic", lambda: next(ticks) / 10)
    with torch.no_grad():
        fastdenoise.tiled(model, tile=8, overlap=4, multiple=1)(torch.rand(1, 1, 40, 40))
    counts = re.findall(r"\rfastdenoise\.tiled: (\d+)/(\d+) tiles", capsys.readouterr().err)
    assert counts[-1] == ("81", "81")
    assert 10 <= len(counts) <= (8.1 - 2) / T.PROGRESS_INTERVAL + 2, counts


def test_bad_arguments():
    m = DnCNN(nc=4, nb=2)
    with pytest.raises(ValueError, match="tile: expected a positive int, got 0"):
        fastdenoise.tiled(m, tile=0)
    with pytest.raises(ValueError, match=r"overlap: expected an int in \[0, tile=16\), got 16"):
        fastdenoise.tiled(m, tile=16, overlap=16)
    with pytest.raises(ValueError, match="blend: expected one of"):
        fastdenoise.tiled(m, blend="max")
    with pytest.raises(ValueError, match="batch: expected a positive int or None, got 0"):
        fastdenoise.tiled(m, batch=0)
    with pytest.raises(TypeError, match="model: expected an nn.Module or a callable, got int"):
        fastdenoise.tiled(3)
    from fastdenoise.errors import ShapeError
    with pytest.raises(ShapeError, match="x: expected 4 dims"):
        fastdenoise.tiled(m)(torch.rand(1, 8, 8))
    # an overlap the tile rounded up to the multiple cannot hold with a stride of one multiple
    with pytest.raises(ValueError, match=r"overlap: expected at most 8 with tile=16 and multiple=8 .*got 12"):
        fastdenoise.tiled(m, tile=16, overlap=12, multiple=8)
    with pytest.raises(ValueError, match=r"overlap: expected at most 8 with tile=13 and multiple=8 "
                                         r"\(the tile rounded up to 16"):
        fastdenoise.tiled(m, tile=13, overlap=12, multiple=8)
    assert fastdenoise.tiled(m, tile=16, overlap=8, multiple=8).overlap == 8
    assert _tiling.max_overlap(16, 8) == 8 and _tiling.max_overlap(4, 8) == 0 and _tiling.max_overlap(9) == 8


def test_inference_only():
    """Tiles run without autograd whatever the parameters ask (no graph kept); an input that
    requires grad is refused under grad mode, accepted under no_grad; the input is untouched."""
    m = DnCNN(nc=4, nb=2)
    assert all(p.requires_grad for p in m.parameters())
    t = fastdenoise.tiled(m, tile=16, overlap=8, progress=False)
    x = torch.rand(1, 1, 30, 20)
    y = t(x)
    assert not y.requires_grad and y.grad_fn is None
    xg = x.clone().requires_grad_(True)
    with pytest.raises(ValueError, match="x: expected a tensor that does not require grad: tiled inference"):
        t(xg)
    with torch.no_grad():
        assert torch.equal(t(xg), y)
    assert torch.equal(xg.detach(), x) and xg.grad is None


@pytest.mark.parametrize("model, err, words", [
    (torch.nn.Conv2d(3, 3, 3, stride=2, padding=1), "ShapeError", r"got shape \[1, 3, 8, 8\]"),
    (torch.nn.Upsample(scale_factor=2), "ShapeError", r"got shape \[1, 3, 32, 32\]"),
    (lambda t: t[:, 0], "ShapeError", r"got shape \[1, 16, 16\]"),
    (lambda t: t[:, :, :, :-1], "ShapeError", r"got shape \[1, 3, 16, 15\]"),
    (lambda t: torch.cat([t, t]), "ShapeError", r"got shape \[2, 3, 16, 16\]"),
    (lambda t: 3, "TypeError", "got int"),
    (lambda t: (), "TypeError", "got tuple"),
    (lambda t: (t * 255).to(torch.uint8), "DTypeError", "got dtype uint8"),
], ids=["downsamples", "upsamples", "drops-a-dim", "crops", "changes-the-batch", "not-a-tensor", "empty-tuple",
        "integer-output"])
def test_a_model_that_does_not_keep_the_tile_is_named(model, err, words):
    """A model whose output cannot be stitched into the image is an error naming the model and
    what its output should have been, not an error from the overlap-add's arguments."""
    from fastdenoise import errors
    kind = getattr(errors, err, None) or TypeError
    x = torch.rand(1, 3, 40, 50)
    with pytest.raises(kind, match=r"^model: expected a float \(N, C, th, tw\) = \(1, C, 16, 16\) tensor for the "
                                   r"tile batch \[1, 3, 16, 16\], " + words):
        fastdenoise.tiled(model, tile=16, overlap=4, multiple=1, progress=False)(x)


def test_a_model_may_change_the_channels_or_return_a_tuple():
    x = torch.rand(2, 3, 21, 30)
    conv = torch.nn.Conv2d(3, 5, 1)
    with torch.no_grad():
        want = conv(x)
        got = fastdenoise.tiled(conv, tile=16, overlap=4, blend="crop", multiple=1, progress=False)(x)
        pair = fastdenoise.tiled(lambda t: (conv(t), None), tile=16, overlap=4, blend="crop", multiple=1,
                                 progress=False)(x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert torch.equal(pair, got)


def test_out_of_memory_on_cpu_is_not_retried(monkeypatch):
    t = fastdenoise.tiled(DnCNN(nc=4, nb=2), tile=8)
    monkeypatch.setattr(t, "_run", lambda *a: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("boom")))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        t(torch.rand(1, 1, 8, 8))


# --------------------------------------------------------------------------------------------
# GPU
# --------------------------------------------------------------------------------------------

@pytest.mark.cuda
def test_host_image_with_a_gpu_model():
    model = _rand_weights(NAFNet(img_channel=3, width=8, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]), 12).cuda()
    x = _img(1, 3, 200, 333, seed=13)
    with torch.no_grad():
        on_host = fastdenoise.tiled(model, tile=64, overlap=16, batch=3)(x)
        on_gpu = fastdenoise.tiled(model, tile=64, overlap=16, batch=3)(x.cuda())
    assert on_host.device.type == "cpu" and on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_host, on_gpu.cpu(), rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
def test_gpu_out_of_memory_halves_the_batch(monkeypatch):
    model = DnCNN(nc=8, nb=3).cuda().eval()
    t = fastdenoise.tiled(model, tile=32, batch=8)
    real, calls = t._run, []

    def flaky(x, args, where, tile, batch):
        calls.append((tile, batch))
        if batch > 2:
            raise torch.cuda.OutOfMemoryError("simulated")
        return real(x, args, where, tile, batch)

    monkeypatch.setattr(t, "_run", flaky)
    with pytest.warns(RuntimeWarning, match="out of GPU memory"), torch.no_grad():
        y = t(torch.rand(1, 1, 70, 70))
    assert calls == [(32, 8), (32, 4), (32, 2)] and y.shape == (1, 1, 70, 70)


# --------------------------------------------------------------------------------------------
# Memory: the peak counter, the per-pixel estimate, the host's available memory, the tile plan
# --------------------------------------------------------------------------------------------

from fastdenoise import tiling as _tiling  # noqa: E402
from fastdenoise.models import Restormer  # noqa: E402
from fastdenoise.tiling import (MemoryEstimate, estimate_memory, measure_peak_memory, plan_tile,  # noqa: E402
                                tiled_bytes)


@pytest.mark.parametrize("ctx", [torch.no_grad, torch.inference_mode])
def test_peak_memory_counts_live_op_outputs(ctx):
    """Exact on known allocation patterns: the input is not counted, nor views and in-place
    results; a view keeps its base's storage counted; freed tensors stop counting."""
    n = 300 * 200 * 4

    def two_live(x):
        a = x * 2
        b = a + 1            # a and b live: 2n
        del a
        v = b[:, :10]        # a view: nothing new
        b.add_(1)            # in place: nothing new
        c = b * 3            # b and c: 2n again
        s = v.sum()          # a few bytes
        del v, b             # b's storage goes with its last view
        return c + s         # c and the result: 2n

    def view_keeps_base(x):
        a = torch.empty_like(x)
        b = torch.empty_like(x)
        c = torch.empty_like(x)
        del b
        v = a.view(-1)
        del a                # a's storage lives on through v
        d = torch.empty_like(x)          # v (a), c, d: 3n
        return v, c, d

    x = torch.rand(300, 200)
    with ctx():
        peak, _ = measure_peak_memory(two_live, x)
        assert n * 2 <= peak <= n * 2 + 64
        peak, _ = measure_peak_memory(view_keeps_base, x)
        assert peak == 3 * n
        peak, _ = measure_peak_memory(lambda t: t.view(-1)[:5], x)
        assert peak == 0


def test_memory_estimate_extrapolates_from_the_probe():
    """The per-pixel estimate from one probe predicts a larger, non-square image's measured peak
    (exactly for a plain convolution stack; from above, within 25 %, for the others), and
    records the output channels."""
    torch.manual_seed(0)
    models = [(DnCNN(in_nc=1, out_nc=1, nc=16, nb=4), 1, 1),
              (NAFNet(img_channel=3, width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1]), 3, 4),
              (Restormer(dim=4, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1]), 3, 8)]
    for model, c, m in models:
        model.eval()
        with torch.inference_mode():
            est = estimate_memory(model, c, multiple=m, size=32)
            x = torch.rand(1, c, 96, 80).contiguous(memory_format=torch.channels_last)
            measured, _ = measure_peak_memory(model, x)
        assert est.out_channels == c
        predicted = est.at(96, 80)
        assert measured > 0
        if isinstance(model, DnCNN):
            assert predicted == measured, (predicted, measured)
        else:
            assert measured <= predicted <= 1.25 * measured, (type(model).__name__, predicted, measured)


def test_memory_estimate_rejects_bad_arguments():
    with pytest.raises(ValueError, match="channels: expected a positive int, got 0"):
        estimate_memory(lambda t: t, 0)
    with pytest.raises(ValueError, match="size: expected a positive int, got 2.5"):
        estimate_memory(lambda t: t, 1, size=2.5)
    with pytest.raises(ValueError, match="multiple: expected a positive int, got 0"):
        estimate_memory(lambda t: t, 1, multiple=0)
    est, ov = MemoryEstimate(per_pixel=10.0, out_channels=1), (lambda t: 8)
    with pytest.raises(TypeError, match="estimate: expected a MemoryEstimate, got float"):
        plan_tile(10.0, (1, 1, 99, 99), 1000, overlap=ov)
    with pytest.raises(ValueError, match=r"shape: expected \(B, C, H, W\) of positive ints, got \(1, 99, 99\)"):
        plan_tile(est, (1, 99, 99), 1000, overlap=ov)
    for name, value, words in (("budget", None, "non-negative"), ("multiple", 0, "positive"),
                               ("batch", -1, "positive")):
        kwargs = {"budget": 1000, "multiple": 1, "batch": 1, name: value}
        with pytest.raises(ValueError, match=rf"{name}: expected a {words} int, got {value}"):
            plan_tile(est, (1, 1, 99, 99), kwargs.pop("budget"), overlap=ov, **kwargs)


def test_available_memory_on_the_host(tmp_path, monkeypatch):
    """A positive byte count on the host, capped by a cgroup limit (v2, then v1, reclaimable page
    cache counted as available); None for a device it cannot ask."""
    avail = _tiling.available_memory("cpu")
    assert isinstance(avail, int) and avail > 0
    assert _tiling._cgroup_available(str(tmp_path)) is None                       # no cgroup files
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.current").write_text("1000\n")
    assert _tiling._cgroup_available(str(tmp_path)) is None                       # v2, no limit
    (tmp_path / "memory.max").write_text(f"{5 << 20}\n")
    (tmp_path / "memory.stat").write_text("anon 10\ninactive_file 300\nactive_file 7\n")
    assert _tiling._cgroup_available(str(tmp_path)) == (5 << 20) - 1000 + 300
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(f"{1 << 62}\n")          # v1's "no limit"
    (v1 / "memory" / "memory.usage_in_bytes").write_text("5\n")
    assert _tiling._cgroup_available(str(v1)) is None
    (v1 / "memory" / "memory.limit_in_bytes").write_text("4096\n")
    (v1 / "memory" / "memory.stat").write_text("total_inactive_file 20\n")
    assert _tiling._cgroup_available(str(v1)) == 4096 - 5 + 20
    monkeypatch.setattr(_tiling, "_cgroup_available", lambda: 1234)
    assert _tiling.available_memory("cpu") == min(1234, avail)
    assert _tiling.available_memory("meta") is None


def test_plan_tile():
    """None when the untiled run fits; else the largest candidate below the image whose tiled
    run fits, never one whose overlap is more than half of it; the smallest acceptable one when
    none fits; a batch needs its images' memory together."""
    est = MemoryEstimate(per_pixel=1000.0, out_channels=3)
    shape = (1, 3, 3000, 2000)
    need = 1000 * 3000 * 2000
    ov = lambda t: t // 8  # noqa: E731
    just = int(need / _tiling.MEMORY_HEADROOM) + 1
    assert plan_tile(est, shape, budget=just, overlap=ov) == (None, need)
    assert plan_tile(est, (2,) + shape[1:], budget=just, overlap=ov) == (2048, 2 * need)
    whole = 3000 * 2000 * 4 * 10                       # float32 accumulator, weights, two outputs
    for tile in (1024, 512):
        assert tiled_bytes(est, 1, 3000, 2000, tile, ov(tile), 1) == 1000 * tile * tile + whole
    assert tiled_bytes(est, 1, 3000, 2000, 2048, 256, 1) == 1000 * 2048 * 2000 + whole   # one tile wide
    budget = int((1000 * 1024 * 1024 + whole) / _tiling.MEMORY_HEADROOM) + 10      # 1024 fits, 2048 does not
    assert plan_tile(est, shape, budget, overlap=ov) == (1024, need)
    assert plan_tile(est, shape, budget, overlap=ov, candidates=(2048, 1020, 512), multiple=8)[0] == 512
    assert plan_tile(est, shape, 1, overlap=ov)[0] == 64                   # nothing fits: the smallest
    assert plan_tile(est, shape, 1, overlap=lambda t: min(72, t - 8))[0] == 256   # 128: overlap 72 > 64
    assert plan_tile(est, (1, 3, 60, 50), 1, overlap=ov) == (None, 1000 * 3000)   # no tile below 60
    # batch tiles per forward (a GPU's default) need their memory together, as far as there are tiles
    assert tiled_bytes(est, 1, 3000, 2000, 1024, ov(1024), 1, batch=4) == 4 * 1000 * 1024 * 1024 + whole
    assert tiled_bytes(est, 1, 3000, 2000, 2048, 256, 1, batch=4) == 2 * 1000 * 2048 * 2000 + whole
    assert plan_tile(est, shape, budget, overlap=ov, batch=4) == (512, need)      # 4 x 1024^2 does not fit
    assert _tiling.default_batch("cpu") == 1 and _tiling.default_batch("cuda:0") == _tiling.CUDA_TILE_BATCH


@pytest.mark.cuda
def test_memory_on_the_gpu():
    """On a GPU: the counter's peak of a convolution stack is at most what the caching allocator
    saw allocated beyond the input (which adds its 512-byte rounding and cuDNN's workspace), the
    estimate extrapolates to a larger image, and the available memory is positive and at most
    the device's."""
    model = DnCNN(in_nc=1, out_nc=1, nc=16, nb=4).cuda().eval()
    x = torch.rand(1, 1, 200, 150, device="cuda")
    with torch.inference_mode():
        model(x)                                      # cuDNN's choice made before measuring
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        peak, _ = measure_peak_memory(model, x)
        allocator_peak = torch.cuda.max_memory_allocated() - base
        est = estimate_memory(model, 1, device="cuda", size=64)
    assert 0 < peak <= allocator_peak, (peak, allocator_peak)
    assert est.at(200, 150) == pytest.approx(peak, rel=0.02)
    free = _tiling.available_memory("cuda")
    assert 0 < free <= torch.cuda.get_device_properties(0).total_memory
