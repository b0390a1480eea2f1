#!/usr/bin/env bash
# Builds and tests fastdenoise on this GPU-less machine against the software of the GPU machines:
# torch 2.11.0+cu130 (PyPI's default build of 2.11.0, with its CUDA 13 pip packages, which carry
# the cuBLAS / cuSPARSE / ... headers torch's CUDA headers include) and the triton it pins (3.6.0),
# with this machine's nvcc.
#
#   bash scripts/device_env_check.sh [WORKDIR]        # default WORKDIR: build/device-env
#
# What it shows: the extension, CUDA kernels and glue included, compiles and links against that
# torch with torch's own flags (C++17 for torch < 2.13, sm_90), loads, and registers a CUDA kernel
# for every op; the CPU test suite passes under that torch; every Triton kernel compiles for sm_90
# through that torch's triton_op / wrap_triton path. What it cannot: run anything on a GPU.
#
# Not part of CI: the environment takes about 5 GB and a few minutes to install (kept in WORKDIR
# for the next run). Run it before a GPU session after changing C++ / CUDA sources or using a torch
# API newer than 2.11. The working tree (tracked and untracked, not ignored files) is copied to
# WORKDIR/src, so the checkout's own CPU build is left alone.
#
# Environment: DEVICE_TORCH_SPEC (default torch==2.11.0), TORCH_CUDA_ARCH_LIST (default 9.0),
# MAX_JOBS (default nproc), PYTEST_ARGS (extra pytest arguments), PYTHON (to make the venv).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
WORK=${1:-build/device-env}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
PY=${PYTHON:-python3}
SPEC=${DEVICE_TORCH_SPEC:-torch==2.11.0}
VENV=$WORK/venv
VPY=$VENV/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PYTHONUNBUFFERED=1
unset TRITON_INTERPRET FASTDENOISE_BACKEND || true
declare -a RESULTS=()
FAILED=0

step() {  # step NAME CMD...: run, record, go on
  local name=$1; shift
  echo; echo "=== $name"
  local t0=$SECONDS rc=0
  "$@" || rc=$?
  [ $rc -eq 0 ] || FAILED=1
  RESULTS+=("$(printf '%-34s %s (%ss)' "$name" "$([ $rc -eq 0 ] && echo ok || echo "FAILED rc=$rc")" $((SECONDS - t0)))")
  return 0
}

make_venv() {
  if [ -x "$VPY" ] && "$VPY" -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '${SPEC#torch==}')" 2>/dev/null; then
    echo "reusing $VENV"
  else
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
    "$VPY" -m pip install -q "$SPEC" "setuptools>=64" wheel ninja pybind11 numpy pytest pytest-benchmark pillow "scikit-image>=0.19"
  fi
  "$VPY" -c "import torch, triton; print('torch', torch.__version__, 'CUDA', torch.version.cuda, '| triton', triton.__version__)"
  "$VPY" -c "import sys, torch; sys.exit(torch.version.cuda is None)" || { echo "$SPEC is not a CUDA build of torch"; return 1; }
}

copy_tree() {  # the working tree as it is now (not a commit); src/build (the objects of the last
  # build) is kept, and tar keeps the files' times, so ninja rebuilds only what changed
  mkdir -p "$WORK/src"
  find "$WORK/src" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
  (cd "$REPO" && git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf -) | tar -xf - -C "$WORK/src"
}

build() {
  local inc cuda_home
  inc=$(ls -d "$VENV"/lib/python*/site-packages/nvidia/cu*/include 2>/dev/null | head -n 1)
  [ -n "$inc" ] || { echo "no CUDA headers among torch's pip packages in $VENV"; return 1; }
  # the toolkit torch finds (CUDA_HOME, else the folder above the nvcc on PATH); where that is
  # not a toolkit (nvcc a wrapper script in /usr/local/bin, as on this VM), /usr/local/cuda
  cuda_home=${CUDA_HOME:-$("$VPY" -c "from torch.utils.cpp_extension import CUDA_HOME; print(CUDA_HOME or '')" 2>/dev/null)}
  if [ ! -f "$cuda_home/include/cuda_runtime.h" ] && [ -x /usr/local/cuda/bin/nvcc ]; then cuda_home=/usr/local/cuda; fi
  [ -f "$cuda_home/include/cuda_runtime.h" ] || { echo "no CUDA toolkit found (CUDA_HOME, nvcc)"; return 1; }
  echo "CUDA_HOME=$cuda_home, CPATH += $inc"
  (cd "$WORK/src" && env CPATH="$inc" CUDA_HOME="$cuda_home" FORCE_CUDA=1 \
    TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "$VPY" setup.py -q build_ext --inplace)
}

loads() {  # the extension loads and every op has its CPU and its CUDA kernel (layer_norm2d: CPU)
  (cd "$WORK/src" && "$VPY" - <<'EOF'
import fastdenoise
info = fastdenoise.build_info()
print({k: info[k] for k in ("torch_version", "cuda", "cuda_version", "cuda_archs", "compiler", "loaded")})
# ops whose CUDA tensors take a Triton kernel: a C++ kernel for the CPU only
CPU_ONLY = {"fastdenoise::layer_norm2d"}
missing = {op: keys for op, keys in info["ops"].items()
           if not ({"CPU"} if op in CPU_ONLY else {"CPU", "CUDA"}) <= set(keys)}
for op, keys in sorted(info["ops"].items()):
    print(f"  {op}: {', '.join(keys)}")
if not info["loaded"] or not info["cuda"] or missing or not info["ops"]:
    raise SystemExit(f"expected fastdenoise._C with CPU and CUDA kernels for every op; missing: {missing}")
EOF
  )
}

cpu_tests() {
  local shared=${FASTDENOISE_SHARED:-$REPO/../shared}
  # shellcheck disable=SC2086
  (cd "$WORK/src" && env PYTHONPATH="$WORK/src" FASTDENOISE_SHARED="$shared" \
    "$VPY" -m pytest tests -q -p no:cacheprovider --ignore=tests/triton --ignore=tests/cuda_emu ${PYTEST_ARGS:-})
}

triton_compiled() {  # every Triton kernel through torch 2.11's launch path, compiled for sm_90
  (cd "$WORK/src" && env PYTHONPATH="$WORK/src" TRITON_DEFAULT_FP_FUSION=1 "$VPY" scripts/triton_aot_check.py --arch 90 |
    grep -E '^(ok|note|[0-9]{4}-)|FAILED')
}

step "environment ($SPEC)" make_venv
if [ $FAILED -eq 0 ]; then
  step "copy of the working tree" copy_tree
  step "build (CPU + CUDA, arch ${TORCH_CUDA_ARCH_LIST:-9.0})" build
  step "extension loads, CUDA kernels" loads
  step "CPU tests under this torch" cpu_tests
  step "Triton kernels compiled (sm_90)" triton_compiled
fi
echo; echo "=== summary ($WORK)"
printf '%s\n' "${RESULTS[@]}"
exit $FAILED
