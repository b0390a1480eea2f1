"""fastdenoise.models.load_official: containers, inference of arch and hyper-parameters, errors."""

from __future__ import annotations

import re

import pytest
import torch

from fastdenoise.errors import CheckpointError
from fastdenoise.models import ARCHS, DnCNN, FFDNet, InvNet, MWCNN, build, infer_arch, load_official

# Small models of each architecture, with the hyper-parameters load_official must find again.
SMALL = {
    "dncnn": dict(in_nc=1, out_nc=1, nc=8, nb=4, act_mode="BR"),
    "ffdnet": dict(in_nc=3, out_nc=3, nc=8, nb=3, act_mode="R"),
    "invdn": dict(channel_in=3, channel_out=3, subnet_constructor="DBNet", block_num=[1, 2], down_num=2),
    "mwcnn": dict(n_feats=4, n_colors=1),
}

CONTAINERS = {
    "bare": lambda sd: sd,
    "params": lambda sd: {"params": sd, "iter": 5},
    "params_ema": lambda sd: {"params_ema": sd},
    "state_dict": lambda sd: {"state_dict": sd, "epoch": 3, "optimizer": {"lr": 1e-3}},
    "model": lambda sd: {"model": sd},
    "net": lambda sd: {"net": sd},
    "network": lambda sd: {"network": sd},
    "module_prefix": lambda sd: {("module." + k): v for k, v in sd.items()},
    "nested_prefixed": lambda sd: {"state_dict": {"params": {("module." + k): v for k, v in sd.items()}}},
}


def _random_state(model):
    """The model's state dict with random values (norm statistics kept positive)."""
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith("haar_weights") or k.endswith("num_batches_tracked"):
            sd[k] = v.clone()
        elif k.endswith("running_var"):
            sd[k] = torch.rand_like(v) + 0.5
        else:
            sd[k] = torch.randn_like(v) * 0.05
    return sd


def _input(arch):
    return {"dncnn": torch.rand(2, 1, 9, 7), "ffdnet": torch.rand(2, 3, 7, 9),
            "invdn": torch.rand(2, 3, 8, 12), "mwcnn": torch.rand(2, 1, 16, 8)}[arch]


def _run(model, arch, x):
    with torch.no_grad():
        return model(x, torch.full((x.shape[0], 1, 1, 1), 0.1)) if arch == "ffdnet" else model(x)


@pytest.mark.parametrize("container", list(CONTAINERS))
@pytest.mark.parametrize("arch", list(SMALL))
def test_load_official_each_container(tmp_path, arch, container):
    src = build(arch, **SMALL[arch])
    sd = _random_state(src)
    src.load_state_dict(sd)
    src.eval()
    path = tmp_path / f"{arch}_{container}.pth"
    torch.save(CONTAINERS[container](sd), path)

    model = load_official(path)
    assert type(model) is ARCHS[arch] and not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    x = _input(arch)
    assert torch.equal(_run(model, arch, x), _run(src, arch, x))
    if container in ("bare", "nested_prefixed"):
        # also from an in-memory dict, and with the arch named
        assert type(load_official(CONTAINERS[container](sd))) is ARCHS[arch]
        assert type(load_official(str(path), arch=arch.upper())) is ARCHS[arch]


@pytest.mark.parametrize("arch", list(SMALL))
def test_infer_arch_hyper_parameters(arch):
    sd = build(arch, **SMALL[arch]).state_dict()
    found, hp = infer_arch(sd)
    assert found == arch
    expected = dict(SMALL[arch])
    if arch == "invdn":
        expected = dict(channel_in=3, channel_out=3, subnet_constructor="DBNet", block_num=[1, 2], down_num=2)
    assert hp == expected


def test_inferred_variants():
    _, hp = infer_arch(DnCNN(in_nc=3, out_nc=3, nc=5, nb=6, act_mode="R").state_dict())
    assert hp == dict(in_nc=3, out_nc=3, nc=5, nb=6, act_mode="R")
    _, hp = infer_arch(DnCNN(nc=5, nb=3, act_mode="IR").state_dict())
    assert hp["act_mode"] == "IR"
    arch, hp = infer_arch(FFDNet(in_nc=1, out_nc=1, nc=6, nb=5, act_mode="BR").state_dict())
    assert arch == "ffdnet" and hp == dict(in_nc=1, out_nc=1, nc=6, nb=5, act_mode="BR")
    arch, hp = infer_arch(InvNet(1, 2, "Resnet", [0, 1, 1], 3).state_dict())
    assert arch == "invdn" and hp == dict(channel_in=1, channel_out=2, subnet_constructor="Resnet",
                                          block_num=[0, 1, 1], down_num=3)
    arch, hp = infer_arch(MWCNN(n_feats=8, n_colors=3).state_dict())
    assert arch == "mwcnn" and hp == dict(n_feats=8, n_colors=3)


def test_kwargs_override_inferred_hyper_parameters():
    sd = DnCNN(nc=4, nb=3, act_mode="BR").state_dict()
    model = load_official(sd, act_mode="BL")
    assert isinstance(model.model[1], torch.nn.LeakyReLU) and isinstance(model.model[4], torch.nn.LeakyReLU)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_official(sd, nb=4)


def test_mismatch_raises_checkpoint_error_listing_keys():
    sd = DnCNN(nc=4, nb=3, act_mode="R").state_dict()
    bad = dict(sd)
    del bad["model.2.bias"]
    bad["model.9.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as exc:
        load_official(bad, arch="dncnn", nb=3, nc=4, act_mode="R")
    msg = str(exc.value)
    assert "missing keys (1): [model.2.bias]" in msg
    assert "unexpected keys (1): [model.9.weight]" in msg

    wrong_shape = dict(sd)
    wrong_shape["model.2.weight"] = torch.zeros(4, 4, 5, 5)
    with pytest.raises(CheckpointError, match=r"shape mismatches \(1\): \[model.2.weight: checkpoint "
                                              r"\[4, 4, 5, 5\] vs model \[4, 4, 3, 3\]\]"):
        load_official(wrong_shape)

    # an FFDNet checkpoint forced into an MWCNN
    with pytest.raises(CheckpointError, match="missing keys .*head.0.body.0.weight.*unexpected keys .*model.0.weight"):
        load_official(FFDNet(nc=4, nb=3).state_dict(), arch="mwcnn")


def test_bn_checkpoint_without_num_batches_tracked_loads():
    src = DnCNN(nc=4, nb=3, act_mode="BR")
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    model = load_official(sd)
    assert isinstance(model, DnCNN)


def test_unknown_arch_and_uninferable_keys():
    sd = DnCNN(nc=4, nb=3, act_mode="R").state_dict()
    with pytest.raises(ValueError, match="arch: expected one of"):
        load_official(sd, arch="unet")
    with pytest.raises(ValueError, match="arch"):
        build("unet")
    with pytest.raises(CheckpointError, match="cannot infer the architecture"):
        load_official({"encoder.0.weight": torch.zeros(3, 3, 3, 3)})
    with pytest.raises(CheckpointError, match="expected a state dict"):
        load_official({"epoch": 3, "optimizer": {"lr": 1.0}})
    with pytest.raises(TypeError, match="path_or_state_dict"):
        load_official(42)


def test_keys_of_an_architecture_with_tensors_that_do_not_fit(tmp_path):
    """Keys that look like a known architecture's but tensors that cannot be its (too few layers,
    a wrong rank) are a CheckpointError naming the file and the architecture, not an error from
    the inference or the constructor; the caller's own overrides keep their ValueError."""
    full = DnCNN(nc=4, nb=3, act_mode="R").state_dict()
    one = {k: v for k, v in full.items() if k.startswith("model.0.")}
    cases = {"one_layer.pth": (one, r"its keys look like dncnn but the hyper-parameters they give "
                                    r"\(.*\) do not build one: nb: expected at least 2"),
             "rank.pth": ({"operations.0.haar_weights": torch.tensor(1.0)},
                          r"its keys look like .* but its tensors do not fit it \(IndexError: ")}
    for name, (sd, words) in cases.items():
        path = tmp_path / name
        torch.save(sd, path)
        with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: {words}"):
            load_official(path)
        with pytest.raises(CheckpointError, match=rf"^checkpoint: {words}"):       # a dict: no file to name
            load_official(sd)
    unknown = tmp_path / "unknown.pth"
    torch.save({"a": torch.zeros(1), "b": torch.zeros(1)}, unknown)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(unknown))}: cannot infer the architecture"):
        load_official(unknown)
    bad_fit = tmp_path / "bad_fit.pth"
    torch.save(full, bad_fit)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(bad_fit))}: the checkpoint does not fit DnCNN"):
        load_official(bad_fit, nb=4)
    with pytest.raises(ValueError, match="act_mode") as info:      # the caller's override: not the file's fault
        load_official(bad_fit, act_mode="Q")
    assert not isinstance(info.value, CheckpointError)


class _NotATensor:
    pass


def test_unreadable_files_name_the_file(tmp_path):
    """A file torch.load cannot read, or one holding objects beyond tensors and containers, is a
    CheckpointError naming the file and why, never unpickled with weights_only=False (which
    torch's own message suggests); a missing file is the OSError naming it."""
    good = tmp_path / "good.pth"
    torch.save(DnCNN(nc=4, nb=3, act_mode="R").state_dict(), good)
    data = good.read_bytes()
    cases = {"garbage.pth": b"not a checkpoint", "empty.pth": b"", "cut.pth": data[:len(data) // 2]}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    torch.save({"model": _NotATensor()}, tmp_path / "object.pth")
    want = {"garbage.pth": r"\(Unsupported operand 110\)$",
            "object.pth": r"\(Unsupported global: GLOBAL .*_NotATensor was not an allowed global",
            "empty.pth": r"\(the file is empty or cut short\)$",
            "cut.pth": r"\(RuntimeError: "}
    for name, words in want.items():
        path = tmp_path / name
        with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: not a checkpoint "
                                                  rf"torch.load\(weights_only=True\) can read {words}") as info:
            load_official(path)
        assert "weights_only=False" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="nonexistent.pth"):
        load_official(tmp_path / "nonexistent.pth")
    assert isinstance(load_official(str(good)), DnCNN)


def test_param_key_is_tried_first():
    a = DnCNN(nc=4, nb=3, act_mode="R").state_dict()
    b = DnCNN(nc=6, nb=3, act_mode="R").state_dict()
    assert load_official({"params": a, "params_ema": b}).model[0].out_channels == 4
    assert load_official({"params": a, "params_ema": b}, param_key="params_ema").model[0].out_channels == 6


def test_build_registry():
    assert {"dncnn", "ffdnet", "invdn", "mwcnn"} <= set(ARCHS)   # each model file adds its own
    assert isinstance(build("DnCNN", nb=3, nc=4), DnCNN)
    assert isinstance(build("mwcnn", n_feats=4), MWCNN)
