#!/usr/bin/env bash
# Everything fastdenoise needs on a fresh machine: torch (if absent), the build tools, the
# package itself with its C++ (and, where torch has CUDA and nvcc is there, CUDA) extension.
#
#   bash scripts/setup.sh            # TORCH_SPEC=torch==2.13.0 by default when torch is absent
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

if ! $PY -c "import torch" 2>/dev/null; then
  # Install torch on its own first: pulled in as a dependency, pip would take the newest
  # build with several GB of CUDA packages.
  $PIP install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
# Build tools and test tools (no build isolation: the extension is compiled for the torch above).
$PIP install -q "setuptools>=64" wheel ninja pybind11 numpy pytest pytest-benchmark pillow "scikit-image>=0.19"
if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then
  # pinned: scripts/triton_aot_check.py follows this version's launch path (TRITON_SPEC overrides)
  $PY -c "import triton" 2>/dev/null || $PIP install -q "${TRITON_SPEC:-triton==3.9.0}"
fi
$PIP install -q --no-build-isolation -e ".[test]"
$PY -c "import fastdenoise, json; i = fastdenoise.build_info(); print('fastdenoise._C loaded:', i['loaded'], '| CUDA kernels:', i['cuda'])"
