"""fastdenoise._dispatch.lazy_module: the loader of the optional Triton backends. The import and
its setup run once, on the first call -- also when that call comes from a function being
compiled (fullgraph: the loader must not break the graph)."""

from __future__ import annotations

import torch

from fastdenoise import _dispatch


def test_lazy_module_imports_once_and_resets():
    calls = []
    get = _dispatch.lazy_module("torch.nn.functional", calls.append)
    assert calls == []
    assert get() is torch.nn.functional and get() is torch.nn.functional
    assert calls == [torch.nn.functional]
    get.reset()
    get()
    assert len(calls) == 2


def test_first_call_inside_a_compiled_function():
    calls = []
    get = _dispatch.lazy_module("torch.nn.functional", calls.append)

    def f(x):
        return get().relu(x) * 2

    torch._dynamo.reset()
    x = torch.randn(5)
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(out, torch.relu(x) * 2)
    assert calls == [torch.nn.functional]
