"""What every Triton launcher does around its launch (fastdenoise.triton._launch): the batch cut
into chunks when the images along a grid's y / z dimension would pass CUDA's 65535 limit, and
the tensor's GPU made current for the launch.

The chunking is tested with the limit lowered to a few programs (a real 65536-image batch is out
of reach of the interpreter): each op, with a batch cut into several launches, still matches its
reference, in both memory formats.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from fastdenoise.ops import (  # noqa: E402
    channel_attention, channel_attention_reference, dwconv_gate, dwconv_gate_reference, layer_norm2d,
    layer_norm2d_reference, pointwise_dwconv, pointwise_dwconv_reference, simplified_channel_attention,
    simplified_channel_attention_reference)
from fastdenoise.ops import mdta as M  # noqa: E402
from fastdenoise.triton import _launch  # noqa: E402

from ._common import DEVICE, MARKS  # noqa: E402

pytestmark = MARKS

B = 5


def _x(c, h, w, layout, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, c, h, w, generator=g)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(DEVICE)


def _w(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * 0.5).to(DEVICE)


def _cases():
    yield "layer_norm2d", lambda lay: (
        (lambda x=_x(6, 3, 5, lay, 1), w=_w(6, seed=2), b=_w(6, seed=3):
         (layer_norm2d(x, w, b, backend="triton"), layer_norm2d_reference(x, w, b))))()
    yield "channel_attention", lambda lay: (
        (lambda x=_x(8, 4, 3, lay, 4), w1=_w(2, 8, seed=5), b1=_w(2, seed=6), w2=_w(8, 2, seed=7), r=_x(8, 4, 3, lay, 8):
         (channel_attention(x, w1, b1, w2, None, residual=r, backend="triton"),
          channel_attention_reference(x, w1, b1, w2, None, residual=r))))()
    yield "simplified_channel_attention", lambda lay: (
        (lambda x=_x(8, 3, 4, lay, 9), w=_w(4, 4, seed=10), b=_w(4, seed=11):
         (simplified_channel_attention(x, w, b, gate=True, backend="triton"),
          simplified_channel_attention_reference(x, w, b, gate=True))))()
    yield "dwconv_gate", lambda lay: (
        (lambda x=_x(6, 4, 5, lay, 12), w=_w(6, 1, 3, 3, seed=13), b=_w(6, seed=14):
         (dwconv_gate(x, w, b, backend="triton"), dwconv_gate_reference(x, w, b))))()
    yield "pointwise_dwconv", lambda lay: (
        (lambda x=_x(5, 3, 4, lay, 15), w=_w(8, 5, 1, 1, seed=16), dw=_w(8, 1, 3, 3, seed=17):
         (pointwise_dwconv(x, w, dw, gate=True, backend="triton"),
          pointwise_dwconv_reference(x, w, dw, gate=True))))()
    yield "transposed_attention", lambda lay: (
        (lambda qkv=_x(24, 3, 4, lay, 18), t=(_w(2, 1, 1, seed=19).abs() + 0.5), wo=_w(8, 8, 1, 1, seed=20):
         (M.transposed_attention(qkv, t, 2, wo, backend="triton"),
          M.transposed_attention_reference(qkv, t, 2, wo))))()


CASES = list(_cases())


@pytest.mark.parametrize("limit", [2, 4])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("name,run", CASES, ids=[c[0] for c in CASES])
def test_batch_cut_into_launches_matches_reference(monkeypatch, name, run, layout, limit):
    """With at most ``limit`` programs along grid y / z, a batch of 5 takes several launches
    (MDTA, 2 heads per image: one image per launch at limit 2); results are unchanged."""
    whole, ref = run(layout)
    launches = []
    real = _launch.batch_chunks

    def counting(n, per_image=1):
        chunks = real(n, per_image)
        launches.append(len(chunks))
        return chunks

    monkeypatch.setattr(_launch, "MAX_GRID_YZ", limit)
    monkeypatch.setattr(_launch, "batch_chunks", counting)
    for mod in ("norm", "attention", "dwconv_gate", "pwdw", "mdta"):
        m = __import__(f"fastdenoise.triton.{mod}", fromlist=["batch_chunks"])
        if hasattr(m, "batch_chunks"):
            monkeypatch.setattr(m, "batch_chunks", counting)
    cut, _ = run(layout)
    assert launches and max(launches) > 1
    assert torch.equal(cut, whole)          # each program computes the same values, chunked or not
    torch.testing.assert_close(cut, ref, rtol=2e-5, atol=2e-5)


def test_batch_chunks():
    assert _launch.batch_chunks(1) == [(0, 1)]
    assert _launch.batch_chunks(65535) == [(0, 65535)]
    assert _launch.batch_chunks(65536) == [(0, 65535), (65535, 65536)]
    assert _launch.batch_chunks(70000, 48) == [(b0, min(70000, b0 + 1365)) for b0 in range(0, 70000, 1365)]
    assert all(b1 - b0 <= 65535 // 48 for b0, b1 in _launch.batch_chunks(70000, 48))
    with pytest.raises(RuntimeError, match="needs 65536 programs per image along a grid dimension of at most 65535"):
        _launch.batch_chunks(1, 65536)


def test_a_single_launch_passes_the_tensors_themselves():
    """The usual case (the batch fits the grid) hands the kernel the caller's tensors, not views
    of them (what a torch.compile trace of the launcher sees is unchanged by the chunking)."""
    x = torch.zeros(3, 2)
    assert _launch.images(x, 0, 3, 3) is x
    part = _launch.images(x, 1, 3, 3)
    assert part.shape == (2, 2) and part.data_ptr() == x[1].data_ptr()


def test_on_device_is_nothing_for_cpu_tensors():
    before = torch.cuda.current_device() if torch.cuda.is_available() else None
    with _launch.on_device(torch.zeros(1)):
        if before is not None:
            assert torch.cuda.current_device() == before


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_runs_on_the_tensors_gpu_not_the_current_one():
    """A tensor on cuda:1 while cuda:0 is current: the kernels launch on cuda:1."""
    torch.cuda.set_device(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 33, 17, generator=g).to("cuda:1")
    w, b = torch.randn(8).to("cuda:1"), torch.randn(8).to("cuda:1")
    got = layer_norm2d(x, w, b, backend="triton")
    torch.cuda.synchronize(1)
    assert got.device == x.device
    torch.testing.assert_close(got, layer_norm2d_reference(x, w, b), rtol=1e-5, atol=1e-5)
    assert torch.cuda.current_device() == 0
