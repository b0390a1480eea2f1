"""Every model traces whole under torch.compile(fullgraph=True) (the Haar op is a real torch op
with a fake implementation and autograd), and the compiled model computes the eager output.

The aot_eager backend runs the traced graph with fake-tensor propagation and AOT autograd, without
the Inductor code generation that a CPU run would spend most of its time on; Inductor itself is
exercised on the GPU (scripts/gpu_check.sh).
"""

from __future__ import annotations

import pytest
import torch

from fastdenoise.models import DnCNN, FFDNet, InvNet, MWCNN

CASES = {
    "invnet": lambda: (InvNet(3, 3, block_num=[1, 1]), (torch.randn(2, 3, 16, 12),)),
    "mwcnn": lambda: (MWCNN(n_feats=8), (torch.randn(2, 1, 16, 24),)),
    "mwcnn_padded": lambda: (MWCNN(n_feats=8), (torch.randn(1, 1, 13, 18),)),
    "dncnn": lambda: (DnCNN(nc=8, nb=3, act_mode="BR"), (torch.randn(2, 1, 9, 11),)),
    "ffdnet": lambda: (FFDNet(nc=8, nb=3), (torch.randn(2, 1, 9, 11), torch.full((2, 1, 1, 1), 0.1))),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_model_compiles_fullgraph(name):
    model, args = CASES[name]()
    model.eval()
    with torch.no_grad():
        ref = model(*args)
        out = torch.compile(model, fullgraph=True, backend="aot_eager")(*args)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_invnet_reverse_compiles_and_inverts():
    model = InvNet(3, 3, block_num=[1, 1]).eval()
    x = torch.randn(1, 3, 16, 16)
    fwd = torch.compile(lambda t: model(t), fullgraph=True, backend="aot_eager")
    rev = torch.compile(lambda t: model(t, rev=True), fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(rev(fwd(x)), x, rtol=1e-5, atol=1e-5)


def test_compiled_training_step_matches_eager():
    """Backward through the Haar op inside a compiled graph (MWCNN: DWT and IWT)."""
    torch.manual_seed(0)
    model = MWCNN(n_feats=4)
    x = torch.randn(1, 1, 16, 16)
    model(x).square().mean().backward()
    eager = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.compile(model, fullgraph=True, backend="aot_eager")(x).square().mean().backward()
    for g_eager, p in zip(eager, model.parameters()):
        torch.testing.assert_close(p.grad, g_eager, rtol=1e-4, atol=1e-6)
