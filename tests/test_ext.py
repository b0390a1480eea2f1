"""The extension loader: import works without _C or with a _C built for another torch (one
warning naming both versions, the reference serves), build_info, python -m fastdenoise.info."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import torch

import fastdenoise
from tests.conftest import REPO

PROBE = textwrap.dedent("""
    import json, sys, warnings
    {prelude}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import torch, fastdenoise
        from fastdenoise.ops import haar_dwt2d, haar_dwt2d_reference
        x = torch.randn(2, 3, 4, 6)
        ok = torch.equal(haar_dwt2d(x, "invdn"), haar_dwt2d_reference(x, "invdn"))
        haar_dwt2d(x)  # a second call must not warn again
    msgs = [str(w.message) for w in caught if "fastdenoise" in str(w.message)]
    print(json.dumps({{"loaded": fastdenoise.build_info()["loaded"], "ok": ok, "warnings": msgs,
                       "torch": torch.__version__}}))
""")


def _probe(prelude: str, cwd, env_path=None) -> dict:
    env = None
    if env_path is not None:
        import os
        env = dict(os.environ, PYTHONPATH=str(env_path))
    out = subprocess.run([sys.executable, "-c", PROBE.format(prelude=prelude)], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_build_info_describes_the_build():
    info = fastdenoise.build_info()
    assert info["loaded"], info  # CI builds the extension: a missing _C here is a failure
    assert info["torch_version"] == torch.__version__
    assert "fastdenoise::haar_dwt2d" in info["ops"] and "CPU" in info["ops"]["fastdenoise::haar_dwt2d"]
    assert info["cuda"] == ("CUDA" in info["ops"]["fastdenoise::haar_dwt2d"])
    assert isinstance(info["cuda_archs"], list)


def test_import_without_extension(tmp_path):
    # Block the import of fastdenoise._C as if it had never been built.
    res = _probe("sys.modules['fastdenoise._C'] = None", cwd=tmp_path)
    assert res["loaded"] is False and res["ok"] is True
    assert len(res["warnings"]) == 1, res["warnings"]
    assert "could not be loaded" in res["warnings"][0] and res["torch"] in res["warnings"][0]


def test_import_with_extension_built_for_another_torch(tmp_path):
    pkg = tmp_path / "fastdenoise"
    shutil.copytree(REPO / "fastdenoise", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "_build_meta.py").write_text("TORCH_VERSION = '1.0.0+elsewhere'\nWITH_CUDA = False\n")
    res = _probe("", cwd=tmp_path, env_path=tmp_path)
    assert res["loaded"] is False and res["ok"] is True
    assert len(res["warnings"]) == 1, res["warnings"]
    msg = res["warnings"][0]
    assert "1.0.0+elsewhere" in msg and res["torch"] in msg


def test_info_command():
    out = subprocess.run([sys.executable, "-m", "fastdenoise.info"], capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert f"torch            {torch.__version__}" in text
    assert "extension _C     loaded" in text and "haar_dwt2d [CPU" in text
    assert "triton" in text and ("GPU              none" in text or "GPU 0" in text)


def test_documented_namespaces_after_a_bare_import(tmp_path):
    # README: fastdenoise.classic.bm3d(...), fastdenoise.metrics.psnr(...) after `import fastdenoise`
    code = ("import fastdenoise\n"
            "for name in ('ops', 'nn', 'models', 'classic', 'metrics', 'io', 'errors'):\n"
            "    assert name in fastdenoise.__all__, name\n"
            "fastdenoise.classic.bm3d, fastdenoise.classic.nlm, fastdenoise.classic.estimate_sigma\n"
            "fastdenoise.metrics.psnr, fastdenoise.metrics.ssim, fastdenoise.io.read_image\n"
            "fastdenoise.ops.block_match, fastdenoise.nn.MDTA, fastdenoise.models.DnCNN\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
