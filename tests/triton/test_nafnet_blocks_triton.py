"""The fused NAFNet blocks (fastdenoise.nn.NAFBlock / BaselineBlock) with their ops on the
Triton kernels (``FASTDENOISE_BACKEND=triton``; the interpreter on CPU) against the plain
blocks of fastdenoise.models.nafnet, both memory formats."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from fastdenoise import nn as fnn  # noqa: E402
from fastdenoise.models import nafnet as plain  # noqa: E402

from ._common import DEVICE, MARKS  # noqa: E402

pytestmark = MARKS


@pytest.mark.parametrize("kind", ["naf", "baseline"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_fused_blocks_on_triton_equal_plain(monkeypatch, kind, layout):
    monkeypatch.setenv("FASTDENOISE_BACKEND", "triton")
    torch.manual_seed(0)
    ref = (plain.NAFBlock(8) if kind == "naf" else plain.BaselineBlock(6, 2, 2)).to(DEVICE).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(0.3 * torch.randn_like(p))
    twin = (fnn.NAFBlock if kind == "naf" else fnn.BaselineBlock).from_module(ref)
    c = 8 if kind == "naf" else 6
    x = torch.randn(2, c, 9, 7, device=DEVICE)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), ref(x), rtol=1e-5, atol=1e-5)
