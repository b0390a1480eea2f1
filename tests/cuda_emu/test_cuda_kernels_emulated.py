"""The CUDA kernels of csrc/cuda/kernels, executed on the CPU by the emulator of
csrc/tests/cuda_emu (every CUDA thread a fiber; see fd_cuda_emu.h for what it checks and what it
cannot). Each launcher is driven as its torch glue drives it and compared with the C++ CPU
kernel bitwise where the two are specified to agree bitwise (block matching, BM3D, overlap-add),
else with the reference within DESIGN.md's tolerances (NLM, Haar). Every kernel runs under four
schedules of its threads (forward, reverse, shuffled, and one warp running ahead of the others
between __syncthreads): an output that depends on the schedule is a race between threads of a
block.

This runs the CUDA code's logic without a GPU; it does not replace running it on one
(scripts/gpu_check.sh): nvcc's code generation, FMA contraction, libdevice and timing are not
exercised here.
"""

from __future__ import annotations

import ctypes
import importlib
import math

import pytest
import torch

import fastdenoise
from fastdenoise import classic

from . import build

# the op modules (some share their name with the function fastdenoise.ops exports)
bm_ops = importlib.import_module("fastdenoise.ops.block_match")
bm3d_ops = importlib.import_module("fastdenoise.ops.bm3d")
haar_ops = importlib.import_module("fastdenoise.ops.haar")
nlm_ops = importlib.import_module("fastdenoise.ops.nlm")
oa_ops = importlib.import_module("fastdenoise.ops.overlap_add")
pytestmark = pytest.mark.skipif(not fastdenoise.build_info()["ops"], reason="the C++ extension (_C) is not built")

SCHEDULES = [pytest.param((0, 0), id="forward"), pytest.param((1, 0), id="reverse"),
             pytest.param((2, 12345), id="shuffled"), pytest.param((3, 0), id="warps-ahead")]
_DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}

P, I64, I32, F64, U64 = ctypes.c_void_p, ctypes.c_longlong, ctypes.c_int, ctypes.c_double, ctypes.c_ulonglong
_SIGNATURES = {
    "fd_emu_block_match": [P, I64, I64, I64, I32, I32, I32, I32, P, P, I64],
    "fd_emu_nlm": [P, P, P, P, I64, I32, I64, I64, I32, I32, I64],
    "fd_emu_nlm_shared_bytes": [I32, I32, I32],
    "fd_emu_bm3d_filter": [P, P, P, P, P, P, P, P, F64, I64, I32, I64, I64, I64, I64, I32, P, P, P],
    "fd_emu_bm3d_shared_bytes": [I32, I32, I32],
    "fd_emu_haar": [I32, I32, P, P, I64, I64, I64, I64, I32, I32],
    "fd_emu_overlap_add": [I32, I32, P, P, I64, I64, I64, I64, P, I32, P, P, I64, I64],
    "fd_emu_set_schedule": [I32, U64],
    "fd_emu_take_fault": [],
    "fd_emu_launches": [],
    "fd_emu_selftest": [I32, P, I32],
}


@pytest.fixture(scope="module")
def emu():
    try:
        path = build.library_path()
    except RuntimeError as e:
        if "no C++ compiler" in str(e):
            pytest.skip(str(e))
        raise
    lib = ctypes.CDLL(str(path))
    for name, args in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = ctypes.c_int
    lib.fd_emu_set_schedule.restype = None
    lib.fd_emu_take_fault.restype = ctypes.c_char_p
    lib.fd_emu_launches.restype = ctypes.c_longlong
    lib.fd_emu_nlm_shared_bytes.restype = ctypes.c_ulonglong
    lib.fd_emu_bm3d_shared_bytes.restype = ctypes.c_ulonglong
    lib.fd_emu_take_fault()
    return lib


def run(lib, name, *args, schedule=(0, 0)):
    """Calls one emulated launcher under a schedule; fails on a CUDA error or an emulator fault."""
    lib.fd_emu_set_schedule(*schedule)
    err = getattr(lib, name)(*args)
    fault = lib.fd_emu_take_fault().decode()
    assert fault == "", f"{name}: emulator fault: {fault}"
    assert err == 0, f"{name}: CUDA error {err}"


def ptr(t: torch.Tensor):
    return ctypes.c_void_p(t.data_ptr()) if t is not None else None


def poisoned(shape, dtype):
    """An output buffer whose every element is NaN (or -1): an element the kernel never writes shows."""
    t = torch.empty(shape, dtype=dtype)
    return t.fill_(float("nan") if dtype.is_floating_point else -1)


# ------------------------------------------------------------------------------------------------
# block matching: bitwise the CPU kernel
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("case", [
    dict(shape=(2, 1, 29, 37), patch=8, search=39, k=16, stride=3, levels=None),
    # patch 8 has its own kernel (column runs of 3 candidates): clipped windows and a whole
    # 39 x 39 one (the reference at (21, 21)), 39 rows = 13 full runs; stride 7 keeps it cheap
    dict(shape=(1, 1, 48, 48), patch=8, search=39, k=16, stride=7, levels=None),
    dict(shape=(1, 3, 23, 19), patch=5, search=11, k=9, stride=2, levels=None),
    dict(shape=(1, 1, 20, 26), patch=4, search=9, k=12, stride=3, levels=3),   # many equal distances
    dict(shape=(1, 1, 25, 30), patch=8, search=13, k=10, stride=3, levels=3),  # ties, patch-8 kernel
    # the grid's y limit lowered to 2 images: three launches, each writing its own images
    dict(shape=(5, 1, 12, 14), patch=8, search=9, k=5, stride=3, levels=None, limit=2),
    dict(shape=(3, 3, 11, 9), patch=5, search=7, k=4, stride=2, levels=None, limit=1),
], ids=["np-profile", "full-window", "rgb-small-window", "ties", "ties-patch8", "batch-in-3-launches",
        "batch-in-3-launches-any-patch"])
def test_block_match_matches_cpu_kernel(emu, case, schedule):
    g = torch.Generator().manual_seed(11)
    x = torch.rand(case["shape"], generator=g)
    if case["levels"]:
        x = torch.floor(x * case["levels"]) / case["levels"]
    patch, search, k, stride = case["patch"], case["search"], case["k"], case["stride"]
    want = bm_ops.block_match(x, patch, search, k, stride, backend="cpu")
    guide = bm_ops.matching_guide(x).contiguous()
    b, h, w = guide.shape
    ny, nx = len(want.rows), len(want.cols)
    index, dist = poisoned((b, ny, nx, k), torch.int64), poisoned((b, ny, nx, k), torch.float32)
    run(emu, "fd_emu_block_match", ptr(guide), b, h, w, patch, search, k, stride, ptr(index), ptr(dist),
        case.get("limit", 65535), schedule=schedule)
    assert torch.equal(index, want.index)
    assert torch.equal(dist, want.distance)
    if case["levels"]:
        assert (want.distance[..., 1:] == want.distance[..., :-1]).any(), "the case has no ties to break"


# ------------------------------------------------------------------------------------------------
# NLM: the reference within float32 tolerance (the CUDA kernel's sums run in another order)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("case", [
    dict(shape=(2, 3, 21, 40), patch=7, search=21),     # two tiles across, one partial; colour
    dict(shape=(1, 1, 17, 33), patch=5, search=9),      # grey, partial tiles both ways
    dict(shape=(1, 3, 9, 11), patch=7, search=35),      # margins reflect more than once; > 48 KiB shared
    dict(shape=(2, 2, 19, 35), patch=3, search=7),      # C = 2: the sums in shared memory, not registers
    # the grid's y / z limit lowered to 2: 3 images x 3 row tiles of 16 in 2 x 2 launches
    dict(shape=(3, 1, 40, 20), patch=3, search=5, limit=2),
    dict(shape=(3, 3, 35, 9), patch=5, search=5, limit=1),       # one image, one row tile per launch
], ids=["rgb-7-21", "grey-5-9", "wide-search", "two-channels", "launches-of-2", "launches-of-1"])
def test_nlm_matches_reference(emu, case, schedule):
    g = torch.Generator().manual_seed(5)
    x = torch.rand(case["shape"], generator=g)
    b, c, h, w = x.shape
    sigma = torch.linspace(0.05, 0.1, b)
    hh = 0.8 * sigma + 0.02
    patch, search = case["patch"], case["search"]
    want = nlm_ops.nlm_reference(x, sigma, hh, patch, search)
    out = poisoned(x.shape, torch.float32)
    run(emu, "fd_emu_nlm", ptr(x), ptr(sigma), ptr(hh), ptr(out), b, c, h, w, patch, search,
        case.get("limit", 65535), schedule=schedule)
    if case["search"] == 35:
        assert emu.fd_emu_nlm_shared_bytes(c, patch, search) > 48 * 1024  # the opt-in path ran
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    cpu = nlm_ops.nlm_filter(x, sigma, hh, patch, search, backend="cpu")
    torch.testing.assert_close(out, cpu, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# BM3D: both stages of real BM3D runs, bitwise the CPU kernel
# ------------------------------------------------------------------------------------------------

def _bm3d_filter_calls(x, sigma, monkeypatch):
    """The arguments of every bm3d_filter call of a CPU BM3D run of x, with the CPU outputs."""
    calls = []
    original = bm3d_ops.bm3d_filter

    def record(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append((args, out))
        return out

    monkeypatch.setattr(classic._bm3d_ops, "bm3d_filter", record)
    classic.bm3d(x, sigma, backend="cpu")
    monkeypatch.undo()
    assert len(calls) == 2
    return calls


def _emu_bm3d_filter(lib, args, schedule):
    noisy, pilot, index, size, sigma, transform, inverse, window, threshold = args
    b, c, h, w = noisy.shape
    ny, nx, k = index.shape[1:]
    acc = torch.zeros((b, c + 1, h, w), dtype=torch.int64)
    bad = torch.zeros(1, dtype=torch.int32)
    out = poisoned(noisy.shape, torch.float32)
    run(lib, "fd_emu_bm3d_filter", ptr(noisy.contiguous()), ptr(None if pilot is None else pilot.contiguous()),
        ptr(index.contiguous()), ptr(size.contiguous()), ptr(sigma.contiguous()), ptr(transform.contiguous()),
        ptr(inverse.contiguous()), ptr(window.contiguous()), float(threshold), b, c, h, w, ny, nx, k, ptr(acc),
        ptr(bad), ptr(out), schedule=schedule)
    return out, int(bad.item())


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("shape", [(1, 1, 27, 34), (2, 3, 20, 17)], ids=["grey", "colour-batch2"])
def test_bm3d_filter_matches_cpu_kernel(emu, shape, schedule, monkeypatch):
    g = torch.Generator().manual_seed(3)
    clean = torch.rand(shape, generator=g)
    noisy = clean + (25 / 255) * torch.randn(shape, generator=g)
    shared = []
    for args, want in _bm3d_filter_calls(noisy, 25 / 255, monkeypatch):
        out, bad = _emu_bm3d_filter(emu, args, schedule)
        assert bad == 0
        assert torch.equal(out, want), f"max diff {(out - want).abs().max().item():.3g}"
        shared.append(emu.fd_emu_bm3d_shared_bytes(shape[1], args[2].shape[3], int(args[1] is not None)))
    if shape[1] == 3:  # colour Wiener groups of 32 blocks take the opt-in shared memory (> 48 KiB)
        assert max(shared) > 48 * 1024


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("channels", [1, 3])
def test_bm3d_filter_every_group_size(emu, channels, schedule, monkeypatch):
    """Groups of every size the kernel handles (1, 2, 4, ..., K: each its own unrolled Haar
    along the group) in both stages, bitwise the CPU kernel. Real runs on small noisy images
    give mostly groups of one block (few matches pass the distance threshold), so the sizes of
    the recorded calls are overwritten with a cycle through all of them; every slot of the
    match lists holds a real block, so any size is valid input."""
    g = torch.Generator().manual_seed(5)
    shape = (2, channels, 23, 21)
    noisy = torch.rand(shape, generator=g) + (25 / 255) * torch.randn(shape, generator=g)
    for args, _ in _bm3d_filter_calls(noisy, 25 / 255, monkeypatch):
        index, size = args[2], args[3]
        k = index.shape[3]
        assert bool((index >= 0).all())
        cycle = [1 << i for i in range(k.bit_length())]                 # 1, 2, ..., K
        sizes = torch.tensor([cycle[i % len(cycle)] for i in range(size.numel())], dtype=size.dtype)
        forced = (*args[:3], sizes.reshape(size.shape), *args[4:])
        want = bm3d_ops.bm3d_filter(*forced, backend="cpu")
        out, bad = _emu_bm3d_filter(emu, forced, schedule)
        assert bad == 0
        assert torch.equal(out, want), f"K={k}: max diff {(out - want).abs().max().item():.3g}"


def test_bm3d_filter_reports_bad_groups(emu, monkeypatch):
    """A group whose size is not a power of two is skipped and reported (1 + its index), as the
    glue then raises."""
    g = torch.Generator().manual_seed(4)
    noisy = torch.rand((1, 1, 20, 20), generator=g)
    args, _ = _bm3d_filter_calls(noisy, 0.1, monkeypatch)[0]
    size = args[3].clone()
    size.view(-1)[5] = 3
    out, bad = _emu_bm3d_filter(emu, (*args[:3], size, *args[4:]), (0, 0))
    assert bad == 6


# ------------------------------------------------------------------------------------------------
# Haar: the reference, every dtype, both layouts, vectorised and scalar paths
# ------------------------------------------------------------------------------------------------

_VARIANTS = {0: "orthonormal", 1: "invdn", 2: "mwcnn"}


@pytest.mark.parametrize("schedule", SCHEDULES[:2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", [((2, 8, 6, 16), 0), ((2, 8, 6, 16), 1), ((1, 3, 6, 10), 0)],
                         ids=["vectorised", "misaligned", "odd-sizes"])
def test_haar_matches_reference(emu, dtype, channels_last, case, schedule):
    """Bitwise: kernel and reference form the same float32 (float64) sums in the same order and
    round once (the signs are +-1, so even an FMA would not change a bit)."""
    g = torch.Generator().manual_seed(8)
    (n, c, hh, ww), offset = case
    for variant, name in _VARIANTS.items():
        # `offset` elements into the buffer: off the 16-byte alignment, the kernels' scalar path
        base = torch.randn(n * c * hh * ww + 1, generator=g).to(dtype)
        flat = base[offset:offset + n * c * hh * ww]
        x = flat.view(n, hh, ww, c).permute(0, 3, 1, 2) if channels_last else flat.view(n, c, hh, ww)
        y = poisoned((n, hh // 2, ww // 2, 4 * c) if channels_last else (n, 4 * c, hh // 2, ww // 2), dtype)
        run(emu, "fd_emu_haar", 1, _DTYPE_CODE[dtype], ptr(flat), ptr(y), n, c, hh // 2, ww // 2,
            int(channels_last), variant, schedule=schedule)
        got = y.permute(0, 3, 1, 2) if channels_last else y
        assert torch.equal(got, haar_ops.haar_dwt2d_reference(x, name)), (name, dtype)
        base2 = torch.empty(y.numel() + 1, dtype=dtype)
        src = base2[offset:offset + y.numel()]
        src.copy_(y.reshape(-1))
        back = poisoned((n, hh, ww, c) if channels_last else (n, c, hh, ww), dtype)
        run(emu, "fd_emu_haar", 0, _DTYPE_CODE[dtype], ptr(src), ptr(back), n, c, hh // 2, ww // 2,
            int(channels_last), variant, schedule=schedule)
        back = back.permute(0, 3, 1, 2) if channels_last else back
        assert torch.equal(back, haar_ops.haar_idwt2d_reference(got, name)), (name, dtype)


# ------------------------------------------------------------------------------------------------
# overlap-add: bitwise the reference
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", SCHEDULES[:2])
@pytest.mark.parametrize("tile_dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("acc_dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("per_tile_window", [False, True], ids=["shared-window", "per-tile-window"])
def test_overlap_add_matches_reference(emu, tile_dtype, acc_dtype, per_tile_window, schedule):
    g = torch.Generator().manual_seed(21)
    n, c, th, tw, b, h, w = 7, 3, 9, 13, 2, 17, 23
    tiles = torch.randn((n, c, th, tw), generator=g).to(tile_dtype)
    # inside, straddling every border, overlapping each other, and one wholly outside
    positions = torch.tensor([[0, 0, 0], [0, -4, 15], [1, 10, -6], [1, 12, 14], [0, 3, 5], [1, -20, 3],
                              [0, 3, 6]], dtype=torch.int64)
    window = torch.rand((n, th, tw) if per_tile_window else (th, tw), generator=g).to(acc_dtype)
    out0 = torch.randn((b, c, h, w), generator=g).to(acc_dtype)
    weight0 = torch.rand((b, 1, h, w), generator=g).to(acc_dtype)
    want_out, want_w = out0.clone(), weight0.clone()
    oa_ops.overlap_add(tiles, positions, want_out, want_w, window, backend="reference")
    out, weight = out0.clone(), weight0.clone()
    launches = emu.fd_emu_launches()
    run(emu, "fd_emu_overlap_add", _DTYPE_CODE[tile_dtype], _DTYPE_CODE[acc_dtype], ptr(tiles), ptr(positions), n, c,
        th, tw, ptr(window), int(per_tile_window), ptr(out), ptr(weight), h, w, schedule=schedule)
    assert emu.fd_emu_launches() - launches == n - 1      # one launch per tile touching its image
    assert torch.equal(out, want_out)
    assert torch.equal(weight, want_w)


# ------------------------------------------------------------------------------------------------
# the emulator's own checks can fail (selftest.cu: small kernels with known defects)
# ------------------------------------------------------------------------------------------------

def _selftest(lib, which, n=64, schedule=(0, 0)):
    out = torch.zeros(n, dtype=torch.float32)
    lib.fd_emu_set_schedule(*schedule)
    err = lib.fd_emu_selftest(which, ptr(out), n)
    return err, lib.fd_emu_take_fault().decode(), out


def test_emulator_runs_a_warp_reduction(emu):
    err, fault, out = _selftest(emu, 0)
    assert (err, fault) == (0, "")
    assert out.tolist() == [float(sum(range(32))), float(sum(range(32, 64)))] + [0.0] * 62


def test_emulator_reports_a_divergent_syncthreads(emu):
    err, fault, _ = _selftest(emu, 1)
    assert err != 0 and "deadlock" in fault


def test_emulator_exposes_a_race_through_the_schedule(emu):
    outs = [_selftest(emu, 2, schedule=s)[2] for s in ((0, 0), (1, 0))]
    assert not torch.equal(outs[0], outs[1])


def test_emulator_exposes_a_race_between_warps_by_letting_one_run_ahead(emu):
    """A warp rewrites shared memory the other warp has not read yet (no __syncthreads after
    the reads): threads in step (forward, reverse, shuffled) all read the first round's values;
    with one warp ahead, the other reads the second round's."""
    in_step = [_selftest(emu, 6, schedule=s) for s in ((0, 0), (1, 0), (2, 7))]
    for err, fault, out in in_step:
        assert (err, fault) == (0, "")
        assert torch.equal(out, in_step[0][2])
    err, fault, ahead = _selftest(emu, 6, schedule=(3, 0))
    assert (err, fault) == (0, "")
    assert not torch.equal(ahead, in_step[0][2])


def test_emulator_poisons_unwritten_dynamic_shared_memory(emu):
    err, fault, out = _selftest(emu, 3)
    assert (err, fault) == (0, "")
    assert math.isnan(out[0].item())


def test_emulator_enforces_the_dynamic_shared_memory_limit(emu):
    err, fault, _ = _selftest(emu, 4)
    assert err != 0 and "dynamic shared memory" in fault


def test_emulator_enforces_the_block_size_limit(emu):
    err, fault, _ = _selftest(emu, 5)
    assert err != 0 and "invalid launch configuration" in fault
