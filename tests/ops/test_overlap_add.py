"""fastdenoise.ops.overlap_add: the reference against a literal loop and a hand-computed case, the
C++ CPU kernel bitwise equal to the reference (every tile dtype, float32 / float64 accumulators,
shared and per-tile windows, tiles overlapping and clipped at every border), tile order, thread
counts, bad input, overlap_normalize, opcheck; CUDA bitwise equal to CPU on a GPU machine."""

from __future__ import annotations

import pytest
import torch

import fastdenoise
from fastdenoise import errors
from fastdenoise.ops import overlap_add, overlap_add_reference, overlap_normalize

HAVE_CPU = fastdenoise._ext.has_kernel("overlap_add", "CPU")
TILE_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
ACC_DTYPES = [torch.float32, torch.float64]


def _cpu():
    if not HAVE_CPU:
        pytest.fail(f"the C++ CPU kernel is not built: {fastdenoise.build_info()}")
    return "cpu"


def _problem(n=13, c=3, th=9, tw=7, b=2, h=23, w=19, tile_dtype=torch.float32, acc=torch.float32,
             per_tile=False, device="cpu"):
    """Random tiles at random positions: overlapping, some reaching past every border, a few
    entirely outside; random (non-zero) accumulators to add to."""
    tiles = torch.randn(n, c, th, tw).to(tile_dtype)
    pos = torch.stack([torch.randint(0, b, (n,)), torch.randint(-th - 1, h + 2, (n,)),
                       torch.randint(-tw - 1, w + 2, (n,))], 1)
    window = torch.rand(n, th, tw) if per_tile else torch.rand(th, tw)
    out = torch.randn(b, c, h, w, dtype=acc)
    weight = torch.rand(b, 1, h, w, dtype=acc)
    return [t.to(device) for t in (tiles, pos, out, weight, window.to(acc))]


def _run(fn, tiles, pos, out, weight, window, **kw):
    """fn on copies of the accumulators; returns the new (out, weight)."""
    o, wt = out.clone(), weight.clone()
    fn(tiles, pos, o, wt, window, **kw)
    return o, wt


def _literal_loop(tiles, pos, out, weight, window):
    """The module docstring, element by element: 0-dim tensors of out's dtype, so each product and
    each sum is rounded to that dtype, as the spec says."""
    dt = out.dtype
    n, c, th, tw = tiles.shape
    h, w = out.shape[-2:]
    for k in range(n):
        b, y, x = (int(v) for v in pos[k])
        for i in range(th):
            for j in range(tw):
                if not (0 <= y + i < h and 0 <= x + j < w):
                    continue
                wv = (window[k] if window.dim() == 3 else window)[i, j].to(dt)
                for ch in range(c):
                    out[b, ch, y + i, x + j] = out[b, ch, y + i, x + j] + tiles[k, ch, i, j].to(dt) * wv
                weight[b, 0, y + i, x + j] = weight[b, 0, y + i, x + j] + wv


def _assert_bitwise(got, want):
    for g, r in zip(got, want):
        assert g.dtype == r.dtype and g.shape == r.shape
        assert torch.equal(g, r), f"max abs diff {(g.double() - r.double()).abs().max().item()}"


# ---------------------------------------------------------------- the reference (the spec)

@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_hand_computed_case(backend):
    if backend == "cpu":
        _cpu()
    # a 3x4 image; tile 0 at (0, 0), tile 1 at (1, -1): its first column is outside
    tiles = torch.tensor([[[[1., 2.], [3., 4.]]], [[[5., 6.], [7., 8.]]]])
    window = torch.tensor([[1., 2.], [2., 1.]])
    pos = torch.tensor([[0, 0, 0], [0, 1, -1]])
    out, weight = torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4)
    overlap_add(tiles, pos, out, weight, window, backend=backend)
    assert out[0, 0].tolist() == [[1, 4, 0, 0], [6 + 12, 4, 0, 0], [8, 0, 0, 0]]
    assert weight[0, 0].tolist() == [[1, 2, 0, 0], [2 + 2, 1, 0, 0], [1, 0, 0, 0]]
    norm = overlap_normalize(out, weight)
    assert norm[0, 0].tolist() == [[1, 2, 0, 0], [18 / 4, 4, 0, 0], [8, 0, 0, 0]]


@pytest.mark.parametrize("acc", ACC_DTYPES)
@pytest.mark.parametrize("per_tile", [False, True])
def test_reference_is_the_literal_loop(acc, per_tile):
    tiles, pos, out, weight, window = _problem(n=6, c=2, th=3, tw=4, h=5, w=6, tile_dtype=torch.float16,
                                               acc=acc, per_tile=per_tile)
    want = _run(_literal_loop, tiles, pos, out, weight, window)
    got = _run(overlap_add_reference, tiles, pos, out, weight, window)
    _assert_bitwise(got, want)
    assert not torch.equal(got[0], out)  # something was added


def test_tiles_are_applied_in_order():
    # 2^24 + 1 rounds back to 2^24 in float32: in tile order the pixel ends at 0, not 1
    tiles = torch.tensor([2.0 ** 24, 1.0, -2.0 ** 24]).view(3, 1, 1, 1)
    pos = torch.tensor([[0, 1, 1]] * 3)
    for backend in ["reference", _cpu()]:
        out, weight = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
        overlap_add(tiles, pos, out, weight, torch.ones(1, 1), backend=backend)
        assert out[0, 0, 1, 1].item() == 0.0 and weight[0, 0, 1, 1].item() == 3.0
        assert out.abs().sum() == 0 and weight.sum() == 3


# ---------------------------------------------------------------- the CPU kernel

@pytest.mark.parametrize("tile_dtype", TILE_DTYPES)
@pytest.mark.parametrize("acc", ACC_DTYPES)
@pytest.mark.parametrize("per_tile", [False, True])
@pytest.mark.parametrize("c", [1, 3])
def test_cpu_kernel_bitwise_equals_reference(tile_dtype, acc, per_tile, c):
    be = _cpu()
    n = int(torch.randint(1, 21, ()))
    th, tw = (int(v) * 2 + 1 for v in torch.randint(1, 8, (2,)))  # odd sizes 3..15
    args = _problem(n=n, c=c, th=th, tw=tw, b=2, h=31, w=27, tile_dtype=tile_dtype, acc=acc, per_tile=per_tile)
    tiles, pos, out, weight, window = args
    before = [t.clone() for t in (tiles, pos, window)]
    got = _run(overlap_add, *args, backend=be)
    want = _run(overlap_add_reference, *args)
    _assert_bitwise(got, want)
    for a, t in zip(before, (tiles, pos, window)):  # inputs unmodified
        assert torch.equal(a, t)


def test_cpu_kernel_window_of_another_dtype_and_non_contiguous_inputs():
    be = _cpu()
    tiles, pos, out, weight, window = _problem(n=9, c=3, th=11, tw=9, acc=torch.float64, per_tile=True)
    win16 = window.half()
    strided_tiles = tiles.transpose(2, 3).contiguous().transpose(2, 3)
    strided_pos = pos.t().contiguous().t()
    assert not strided_tiles.is_contiguous() and not strided_pos.is_contiguous()
    got = _run(overlap_add, strided_tiles, strided_pos, out, weight, win16, backend=be)
    want = _run(overlap_add_reference, tiles, pos, out, weight, win16)
    _assert_bitwise(got, want)


def test_cpu_kernel_accumulating_twice_adds():
    be = _cpu()
    tiles, pos, out, weight, window = _problem(n=15, c=3, th=7, tw=9)
    o, w = out.clone(), weight.clone()
    overlap_add(tiles, pos, o, w, window, backend=be)
    overlap_add(tiles, pos, o, w, window, backend=be)
    ro, rw = out.clone(), weight.clone()
    for _ in range(2):
        overlap_add_reference(tiles, pos, ro, rw, window)
    _assert_bitwise((o, w), (ro, rw))
    # disjoint tiles on zeros: the second call doubles the first exactly
    pos = torch.tensor([[0, 0, 0], [0, 0, 9], [1, 7, 0], [1, 7, 9], [0, 14, 3]])
    tiles = tiles[:5]
    o, w = torch.zeros_like(out), torch.zeros_like(weight)
    overlap_add(tiles, pos, o, w, window, backend=be)
    once = (o.clone(), w.clone())
    overlap_add(tiles, pos, o, w, window, backend=be)
    _assert_bitwise((o, w), (2 * once[0], 2 * once[1]))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_tiles_entirely_outside_are_skipped(backend):
    if backend == "cpu":
        _cpu()
    tiles, _, out, weight, window = _problem(n=8, th=5, tw=6, h=10, w=12)
    big = 2 ** 62
    pos = torch.tensor([[0, -5, 0], [1, 10, 0], [0, 0, -6], [1, 0, 12],
                        [0, big, 0], [1, -big, -big], [0, 3, big], [1, -big, 3]])
    got = _run(overlap_add, tiles, pos, out, weight, window, backend=backend)
    _assert_bitwise(got, (out, weight))
    # one pixel in: row -4 and column -5 put the tile's last pixel at (0, 0)
    pos[0] = torch.tensor([0, -4, -5])
    got = _run(overlap_add, tiles, pos, out, weight, window, backend=backend)
    changed = (got[0] != out).any(1)[0] | (got[1] != weight)[0, 0]
    assert changed.sum() == 1 and changed[0, 0]
    assert torch.equal(got[0][1], out[1]) and torch.equal(got[1][1], weight[1])
    assert got[1][0, 0, 0, 0] == weight[0, 0, 0, 0] + window[4, 5]


@pytest.mark.parametrize("backend", ["reference", "cpu", None])
def test_no_tiles_is_a_no_op(backend):
    if backend == "cpu":
        _cpu()
    _, _, out, weight, window = _problem(th=4, tw=5)
    tiles = torch.rand(0, 3, 4, 5)
    got = _run(overlap_add, tiles, torch.zeros(0, 3, dtype=torch.int64), out, weight, window, backend=backend)
    _assert_bitwise(got, (out, weight))
    got = _run(overlap_add, tiles, torch.zeros(0, 3, dtype=torch.int64), out, weight, torch.rand(0, 4, 5),
               backend=backend)
    _assert_bitwise(got, (out, weight))


def test_cpu_kernel_same_bits_with_1_and_2_threads():
    be = _cpu()
    # tiles of 4 x 130 x 90 > 32768 elements: each is split over the threads
    args = _problem(n=6, c=3, th=130, tw=90, b=2, h=201, w=177, tile_dtype=torch.bfloat16)
    threads = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2, 1, 2):
            torch.set_num_threads(t)
            outs.append(_run(overlap_add, *args, backend=be))
    finally:
        torch.set_num_threads(threads)
    want = _run(overlap_add_reference, *args)
    for got in outs:
        _assert_bitwise(got, want)


def test_default_backend_is_the_cpu_kernel():
    _cpu()
    from fastdenoise import _dispatch
    args = _problem()
    assert _dispatch.resolve("overlap_add", args[2], None, triton_op=False) == "cpu"
    _assert_bitwise(_run(overlap_add, *args), _run(overlap_add_reference, *args))


@pytest.mark.parametrize("per_tile", [False, True])
@pytest.mark.parametrize("tile_dtype, acc", [(torch.float32, torch.float32), (torch.float16, torch.float64)])
def test_opcheck_cpu(per_tile, tile_dtype, acc):
    _cpu()
    tiles, pos, out, weight, window = _problem(n=5, c=2, th=5, tw=7, h=11, w=13, tile_dtype=tile_dtype, acc=acc,
                                               per_tile=per_tile)
    torch.library.opcheck(torch.ops.fastdenoise.overlap_add.default, (tiles, pos, out, weight, window))


def test_op_checks_in_cpp():
    """The compiled op repeats the essentials (for callers of torch.ops.fastdenoise directly)."""
    _cpu()
    tiles, pos, out, weight, window = _problem(n=4, c=1)
    op = torch.ops.fastdenoise.overlap_add
    bad = pos.clone()
    bad[2, 0] = 2
    before = (out.clone(), weight.clone())
    with pytest.raises(RuntimeError, match=r"positions: expected image indices in \[0, 2\).*got 2 for tile 2"):
        op(tiles, bad, out, weight, window)
    _assert_bitwise((out, weight), before)  # nothing applied before the check
    with pytest.raises(RuntimeError, match="out and weight_out share memory"):
        op(tiles, pos, out, out, window)
    with pytest.raises(RuntimeError, match="window: expected out's dtype"):
        op(tiles, pos, out, weight, window.double())
    with pytest.raises(RuntimeError, match="out: expected a contiguous"):
        op(tiles, pos, out.transpose(2, 3), weight.transpose(2, 3), window)
    with pytest.raises(RuntimeError, match="positions: expected int64"):
        op(tiles, pos.int(), out, weight, window)
    with pytest.raises(RuntimeError, match="tiles: expected float16, bfloat16, float32 or float64"):
        op(tiles.int(), pos, out, weight, window)


# ---------------------------------------------------------------- bad input

def _bad_cases():
    t, p, o, w, win = _problem(n=4, c=3, th=5, tw=6, b=2, h=10, w=12)
    buf = torch.zeros(840)
    return [
        (dict(tiles=t[0]), errors.ShapeError, r"tiles: expected 4 dims \(N, C, th, tw\), got 3"),
        (dict(tiles=t.int()), errors.DTypeError, "tiles: expected dtype in .*got int32"),
        (dict(out=o.half()), errors.DTypeError, r"out: expected dtype in \(float32, float64\), got float16"),
        (dict(out=o[:, :2]), errors.ShapeError, "out: expected 3 channels .*got C=2"),
        (dict(out=o[:0]), errors.ShapeError, "out: expected a non-empty tensor"),
        (dict(weight_out=w[:, :, :5]), errors.ShapeError, r"weight_out: expected shape \[2, 1, 10, 12\], got \[2, 1, 5, 12\]"),
        (dict(weight_out=torch.cat([w, w], 1)), errors.ShapeError, r"weight_out: expected shape \[2, 1, 10, 12\]"),
        (dict(weight_out=w.double()), errors.DTypeError, "weight_out: expected out's dtype torch.float32, got torch.float64"),
        (dict(out=o.transpose(2, 3).contiguous().transpose(2, 3)), ValueError, "out: expected a contiguous"),
        (dict(weight_out=w.transpose(2, 3).contiguous().transpose(2, 3)), ValueError, "weight_out: expected a contiguous"),
        (dict(positions=p.tolist()), TypeError, "positions: expected a torch.Tensor"),
        (dict(positions=p.int()), errors.DTypeError, "positions: expected dtype int64, got int32"),
        (dict(positions=p[:, :2]), errors.ShapeError, r"positions: expected shape \[4, 3\] .*got \[4, 2\]"),
        (dict(positions=p[:3]), errors.ShapeError, r"positions: expected shape \[4, 3\]"),
        (dict(window=win.tolist()), TypeError, "window: expected a torch.Tensor"),
        (dict(window=win[:4]), errors.ShapeError, r"window: expected shape \[5, 6\] or \[4, 5, 6\], got \[4, 6\]"),
        (dict(window=win.expand(3, 5, 6)), errors.ShapeError, r"window: expected shape .*got \[3, 5, 6\]"),
        (dict(window=torch.ones(5, 6, dtype=torch.int64)), errors.DTypeError, "window: expected a floating dtype"),
        (dict(positions=p.index_fill(1, torch.tensor([0]), 2)), ValueError,
         r"positions: expected image indices in \[0, 2\) \(out has 2 images\), got 2"),
        (dict(positions=p.index_fill(1, torch.tensor([0]), -1)), ValueError, r"got -1"),
        (dict(tiles=t.to("meta")), errors.DeviceError, "tiles: expected a tensor on cpu .*got meta"),
        (dict(weight_out=w.to("meta")), errors.DeviceError, "weight_out: expected a tensor on cpu .*got meta"),
        (dict(window=win.to("meta")), errors.DeviceError, "window: expected a tensor on cpu .*got meta"),
        # accumulators sharing memory with each other or with an input (contiguous views of one buffer)
        (dict(out=buf[:720].view(2, 3, 10, 12), weight_out=buf[600:840].view(2, 1, 10, 12)), ValueError,
         "out: expected memory separate from weight_out .*share memory"),
        (dict(tiles=o.view(-1)[:360].view(4, 3, 5, 6)), ValueError, "tiles: expected memory separate from out"),
        (dict(window=w.view(-1)[:30].view(5, 6)), ValueError, "window: expected memory separate from weight_out"),
    ], dict(tiles=t, positions=p, out=o, weight_out=w, window=win)


@pytest.mark.parametrize("backend", ["reference", "cpu", None])
def test_bad_input(backend):
    if backend == "cpu":
        _cpu()
    cases, good = _bad_cases()
    for change, err, words in cases:
        args = {**good, **change}
        with pytest.raises(err, match=words):
            overlap_add(**args, backend=backend)
    # the reference entry point checks the same way
    with pytest.raises(errors.ShapeError, match="positions: expected shape"):
        overlap_add_reference(**{**good, "positions": good["positions"][:, :2]})
    # not differentiable: a tensor that requires grad is refused under grad mode, before any
    # accumulation (out left as it was), on every backend
    for name in ("out", "weight_out", "tiles", "window"):
        args = {k: v.clone() for k, v in good.items()}
        before = {k: v.clone() for k, v in args.items()}
        args[name].requires_grad_(True)
        with pytest.raises(ValueError, match=rf"^{name}: expected a tensor that does not require grad "
                                             r"\(overlap_add accumulates in place and is not differentiable\)"):
            overlap_add(**args, backend=backend)
        assert all(torch.equal(args[k].detach(), before[k]) for k in args)
    with pytest.raises(errors.DeviceError, match="positions: expected a tensor on cpu or on cpu"):
        overlap_add(**{**good, "positions": good["positions"].to("meta")}, backend=backend)


def test_backend_cuda_on_cpu_tensors_raises():
    tiles, pos, out, weight, window = _problem()
    with pytest.raises(errors.DeviceError, match="backend='cuda': expected a tensor on cuda, got cpu"):
        overlap_add(tiles, pos, out, weight, window, backend="cuda")
    with pytest.raises(errors.BackendError, match="no Triton kernel"):
        overlap_add(tiles, pos, out, weight, window, backend="triton")
    with pytest.raises(ValueError, match="backend: expected one of"):
        overlap_add(tiles, pos, out, weight, window, backend="gpu")


# ---------------------------------------------------------------- overlap_normalize

@pytest.mark.parametrize("dtype", ACC_DTYPES)
def test_overlap_normalize(dtype):
    out = torch.randn(2, 3, 7, 9, dtype=dtype)
    weight = torch.rand(2, 1, 7, 9, dtype=dtype)
    weight[weight < 0.3] = 0
    assert (weight == 0).any() and (weight > 0).any()
    before = (out.clone(), weight.clone())
    got = overlap_normalize(out, weight)
    assert got.dtype == dtype and got.shape == out.shape
    zero = (weight == 0).expand_as(out)
    assert (got[zero] == 0).all()
    assert torch.equal(got[~zero], (out / weight)[~zero])
    _assert_bitwise((out, weight), before)
    with pytest.raises(errors.ShapeError, match=r"weight_out: expected shape \[2, 1, 7, 9\], got \[2, 3, 7, 9\]"):
        overlap_normalize(out, out)
    with pytest.raises(errors.ShapeError, match="weight_out: expected 4 dims"):
        overlap_normalize(out, weight[0])
    with pytest.raises(errors.DeviceError, match="weight_out: expected a tensor on cpu"):
        overlap_normalize(out, weight.to("meta"))


# ---------------------------------------------------------------- CUDA (GPU machine only)

def _cuda_args(args):
    return [t.cuda() for t in args]


@pytest.mark.cuda
@pytest.mark.parametrize("tile_dtype", TILE_DTYPES)
@pytest.mark.parametrize("acc", ACC_DTYPES)
@pytest.mark.parametrize("per_tile", [False, True])
def test_cuda_kernel_bitwise_equals_cpu_kernel(tile_dtype, acc, per_tile):
    for c, th, tw in ((1, 7, 9), (3, 33, 17)):
        args = _problem(n=20, c=c, th=th, tw=tw, b=2, h=61, w=45, tile_dtype=tile_dtype, acc=acc, per_tile=per_tile)
        cpu = _run(overlap_add, *args, backend="cpu")
        dev = _cuda_args(args)
        before = [t.clone() for t in (dev[0], dev[4])]
        gpu = _run(overlap_add, dev[0], args[1], *dev[2:], backend="cuda")  # positions on the CPU
        assert gpu[0].is_cuda and gpu[1].is_cuda
        _assert_bitwise([g.cpu() for g in gpu], cpu)
        gpu2 = _run(overlap_add, *dev, backend="cuda")                       # positions on the GPU
        _assert_bitwise(gpu2, gpu)
        assert torch.equal(before[0], dev[0]) and torch.equal(before[1], dev[4])


@pytest.mark.cuda
def test_cuda_kernel_default_dispatch_order_and_skips():
    tiles = torch.tensor([2.0 ** 24, 1.0, -2.0 ** 24], device="cuda").view(3, 1, 1, 1)
    pos = torch.tensor([[0, 1, 1]] * 3 + [[0, -1, 0], [0, 2 ** 62, 0]], device="cuda")
    tiles = torch.cat([tiles, torch.ones(2, 1, 1, 1, device="cuda")])
    out, weight = torch.zeros(1, 1, 2, 2, device="cuda"), torch.zeros(1, 1, 2, 2, device="cuda")
    overlap_add(tiles, pos, out, weight, torch.ones(1, 1, device="cuda"))
    assert out.abs().sum().item() == 0 and weight[0, 0, 1, 1].item() == 3 and weight.sum().item() == 3
    empty = torch.rand(0, 1, 1, 1, device="cuda")
    overlap_add(empty, torch.zeros(0, 3, dtype=torch.int64), out, weight, torch.ones(1, 1, device="cuda"))
    assert weight.sum().item() == 3


@pytest.mark.cuda
def test_cuda_opcheck():
    for per_tile in (False, True):
        for tile_dtype, acc in ((torch.float32, torch.float32), (torch.bfloat16, torch.float64)):
            tiles, pos, out, weight, window = _problem(n=5, c=2, th=5, tw=7, h=11, w=13, tile_dtype=tile_dtype,
                                                       acc=acc, per_tile=per_tile)
            dev = [tiles.cuda(), pos, out.cuda(), weight.cuda(), window.cuda()]  # positions stay on the CPU
            torch.library.opcheck(torch.ops.fastdenoise.overlap_add.default, tuple(dev))


@pytest.mark.cuda
def test_cuda_64bit_offsets():
    # two images of 2^15 x (2^15 + 2) pixels: image 1 starts past 2^30 elements and its bottom
    # right past 2^31; out and weight_out float32, 2 x 8 GiB
    h, w = 2 ** 15, 2 ** 15 + 2
    free, _ = torch.cuda.mem_get_info()
    need = 2 * 2 * h * w * 4
    if free < need + 2 ** 30:
        pytest.fail(f"needs {need / 2**30:.1f} GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    out = torch.zeros(2, 1, h, w, device="cuda")
    weight = torch.zeros(2, 1, h, w, device="cuda")
    tiles = torch.randn(2, 1, 9, 11)
    window = torch.rand(9, 11)
    pos = torch.tensor([[1, h - 5, w - 7], [1, h - 9, w - 11]])
    overlap_add(tiles.cuda(), pos, out, weight, window.cuda(), backend="cuda")
    co, cw = torch.zeros(1, 1, 9, 11), torch.zeros(1, 1, 9, 11)   # the image's last 9 x 11 pixels
    overlap_add_reference(tiles, pos - torch.tensor([1, h - 9, w - 11]), co, cw, window)
    assert torch.equal(out[1:, :, -9:, -11:].cpu(), co) and torch.equal(weight[1:, :, -9:, -11:].cpu(), cw)
    assert out[0].count_nonzero().item() == 0 and weight[0].count_nonzero().item() == 0
    assert out[1].count_nonzero().item() == co.count_nonzero().item() > 0
