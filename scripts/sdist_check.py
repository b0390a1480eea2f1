"""A user's ``pip install fastdenoise-0.1.0.tar.gz``, checked from a copy of the source tree:

1. the sdist is built (setuptools' PEP 517 hook) from the tree as a fresh clone has it;
2. it must carry every file the build needs — setup.py's CUDA toolkit check, every C++ / CUDA
   source and header (also the CUDA ones a CPU machine does not compile), the CMake build,
   LICENSE, README, the package's modules and the tests — and none of this machine's build
   products (``fastdenoise/_build_meta.py``, binaries, caches);
3. with ``--wheel``: a wheel is compiled from the sdist alone (no build isolation: against this
   torch), installed into a folder outside the checkout, and imported from there in a fresh
   process: the extension loads, every op has its C++ kernel, and each C++ op and the classical
   denoisers give their plain-PyTorch reference's result.

    python scripts/sdist_check.py [--wheel] [--tree DIR] [--keep DIR]

Exit status 0 when everything holds; the problems are printed otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
VERSION = "0.1.0"
# Not part of a source distribution: build products, caches, local environments, data copies.
NOT_SHIPPED = {"build", "dist", ".git", ".benchmarks", ".pytest_cache", ".shared", ".whl", ".gl",
               "__pycache__"}
TOP_LEVEL = ("setup.py", "_setup_cuda.py", "pyproject.toml", "README.md", "LICENSE", "CMakeLists.txt")


def _ignored(name: str) -> bool:
    return (name in NOT_SHIPPED or name.endswith((".egg-info", ".so", ".pyc", ".o"))
            or name.startswith("cmake-build") or name == "_build_meta.py")


def copy_source_tree(tree: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    """``tree`` as a fresh clone has it: without build products, caches and local folders."""
    shutil.copytree(tree, dst, symlinks=True, ignore=lambda _d, names: [n for n in names if _ignored(n)])
    return dst


def needed_files(src: pathlib.Path) -> set[str]:
    def under(folder):
        return {p.relative_to(src).as_posix() for p in (src / folder).rglob("*") if p.is_file()}

    need = set(TOP_LEVEL)
    need |= under("csrc") | under("tests")
    need |= {p for p in under("fastdenoise") if p.endswith(".py")}
    return need


def build_sdist(src: pathlib.Path, outdir: pathlib.Path) -> pathlib.Path:
    out = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
                          "print(b.build_sdist(sys.argv[1]))", str(outdir)],
                         cwd=src, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"building the sdist failed (rc {out.returncode}):\n{out.stderr}")
    return outdir / out.stdout.strip().splitlines()[-1]


def sdist_problems(need: set[str], sdist: pathlib.Path) -> list[str]:
    problems = []
    if sdist.name != f"fastdenoise-{VERSION}.tar.gz":
        problems.append(f"sdist named {sdist.name}, expected fastdenoise-{VERSION}.tar.gz")
    with tarfile.open(sdist) as tar:
        shipped = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile() and "/" in m.name}
    missing = sorted(need - shipped)
    if missing:
        problems.append(f"missing from the sdist ({len(missing)}): {' '.join(missing)}")
    # (setuptools always ships its own fastdenoise.egg-info metadata: not a build product)
    stray = sorted(p for p in shipped if any(_ignored(part) and not part.endswith(".egg-info")
                                             for part in p.split("/")))
    if stray:
        problems.append(f"build products in the sdist: {' '.join(stray)}")
    return problems


# Run in a fresh process from outside the checkout, with only the installed wheel on the path.
PROBE = r"""
import json
import torch, fastdenoise
from fastdenoise import classic, ops
info = fastdenoise.build_info()
torch.manual_seed(0)
x = torch.rand(2, 1, 29, 35)
checks = {}
e = x[..., :28, :34]
checks["haar"] = torch.equal(ops.haar_dwt2d(e, backend="cpu"), ops.haar_dwt2d_reference(e))
checks["nlm"] = torch.allclose(ops.nlm_filter(x, 0.05, 0.1, 5, 9, backend="cpu"),
                               ops.nlm_reference(x, 0.05, 0.1, 5, 9).float(), atol=1e-5)
got = ops.block_match(x, 8, 15, 4, 3, backend="cpu")
want = ops.block_match_reference(x, 8, 15, 4, 3)
checks["block_match"] = torch.equal(got.index, want.index)
tiles, win = torch.rand(3, 2, 8, 8), torch.rand(8, 8)
pos = torch.tensor([[0, 0, 0], [1, 3, 5], [0, -2, 9]])
outs = [(torch.zeros(2, 2, 17, 13), torch.zeros(2, 1, 17, 13)) for _ in range(2)]
ops.overlap_add(tiles, pos, *outs[0], win, backend="cpu")
ops.overlap_add_reference(tiles, pos, *outs[1], win)
checks["overlap_add"] = all(torch.equal(a, b) for a, b in zip(outs[0], outs[1]))
yy, xx = torch.meshgrid(torch.linspace(0, 1, 40), torch.linspace(0, 1, 45), indexing="ij")
clean = (0.5 + 0.3 * torch.sin(6 * xx) * torch.cos(4 * yy))[None, None]
noisy = clean + 0.1 * torch.randn_like(clean)
cpu, ref = classic.bm3d(noisy, 0.1, backend="cpu"), classic.bm3d(noisy, 0.1, backend="reference")
checks["bm3d"] = ((cpu - ref).abs() <= 1e-5).float().mean().item() >= 0.99
print(json.dumps({"file": fastdenoise.__file__, "loaded": info["loaded"], "ops": info["ops"],
                  "checks": checks}))
"""


def wheel_problems(sdist: pathlib.Path, work: pathlib.Path) -> list[str]:
    env = {**os.environ, "MAX_JOBS": os.environ.get("MAX_JOBS", str(os.cpu_count() or 2))}
    wheels, site = work / "wheel", work / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
                          str(sdist), "-w", str(wheels)], capture_output=True, text=True, env=env,
                         timeout=1800)
    if out.returncode != 0:
        return [f"pip wheel from the sdist failed (rc {out.returncode}):\n{out.stdout}\n{out.stderr}"]
    built = sorted(wheels.glob("fastdenoise-*.whl"))
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                          *map(str, built)], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        return [f"installing {built} failed (rc {out.returncode}):\n{out.stderr}"]
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=work, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(site)}, timeout=600)
    if out.returncode != 0:
        return [f"the installed wheel failed its probe (rc {out.returncode}):\n{out.stderr}"]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"installed wheel: {res['file']}; ops {sorted(res['ops'])}; checks {res['checks']}")
    problems = []
    if not pathlib.Path(res["file"]).is_relative_to(site):
        problems.append(f"the probe imported {res['file']}, not the installed wheel under {site}")
    if not res["loaded"]:
        problems.append("the installed wheel's extension did not load")
    no_cpu = sorted(op for op, keys in res["ops"].items() if "CPU" not in keys)
    if no_cpu or len(res["ops"]) < 6:
        problems.append(f"ops without a CPU kernel: {no_cpu}; registered: {sorted(res['ops'])}")
    problems += [f"{name}: the installed kernel differs from the reference"
                 for name, ok in res["checks"].items() if not ok]
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", type=pathlib.Path, default=REPO, help="the source tree (default: this checkout)")
    ap.add_argument("--wheel", action="store_true", help="also build, install and import a wheel from it")
    ap.add_argument("--keep", type=pathlib.Path, help="work in this folder and keep it (default: a temporary one)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fd-sdist-") as tmp:
        work = args.keep or pathlib.Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        src = copy_source_tree(args.tree, work / "src")
        need = needed_files(src)  # before setup.py runs: it writes _build_meta.py into the tree
        sdist = build_sdist(src, work / "dist")
        problems = sdist_problems(need, sdist)
        print(f"sdist: {sdist.name}, {len(need)} needed files checked")
        if args.wheel and not problems:
            problems += wheel_problems(sdist, work)
    for p in problems:
        print(f"PROBLEM: {p}")
    print("sdist check:", "ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
