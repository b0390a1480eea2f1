#!/usr/bin/env bash
# The whole CPU test run (what CI runs): set-up, the CPU tests, the Triton kernels under the
# interpreter in their own process and compiled for sm_90 / sm_80 (no GPU: Triton and ptxas),
# also with the GPU machines' triton, the CUDA kernels executed by the CPU emulator under
# AddressSanitizer, nvcc compile of every CUDA kernel file for sm_90 / sm_80 (no local memory),
# the C++ sources and the CUDA glue compiled (syntax) as C++17 and C++20, the CMake build with
# ctest and the op-name comparison of the two builds, a wheel compiled from the sdist and run
# from outside the checkout, and a smoke run of the benchmarks.
# Every stage runs; the script fails if any stage failed (or collected no tests).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
declare -a RESULTS=()
FAILED=0

stage() {  # stage NAME CMD...
  local name=$1; shift
  echo; echo "=== $name: $*"
  local t0=$SECONDS
  "$@"
  local rc=$?
  if [ $rc -eq 5 ]; then echo "!!! $name collected no tests (pytest exit 5)"; fi
  if [ $rc -ne 0 ]; then FAILED=1; fi
  RESULTS+=("$(printf '%-28s %s (%ss)' "$name" "$([ $rc -eq 0 ] && echo ok || echo "FAILED rc=$rc")" $((SECONDS - t0)))")
}

bash scripts/setup.sh || { echo "set-up failed"; exit 1; }
$PY -m fastdenoise.info

stage "pytest (CPU)" $PY -m pytest tests -q --ignore=tests/triton --ignore=tests/cuda_emu -p no:cacheprovider
stage "pytest (Triton interpreter)" env TRITON_INTERPRET=1 $PY -m pytest tests/triton -q -p no:cacheprovider
# every Triton kernel compiled for sm_90 (H100 / H200) and sm_80 (A100) as its launchers launch
# it (the interpreter compiles nothing); registers and spills from ptxas
stage "Triton kernels compiled (sm_90, sm_80)" env TRITON_DEFAULT_FP_FUSION=1 $PY scripts/triton_aot_check.py --arch 90 80
# and for sm_90 with the triton the GPU machines run: torch 2.11 pins triton 3.6.0, whose ptxas
# (CUDA 12.8) allocates registers differently from 3.9's (a kernel spill-free under one spilled
# under the other). In a virtual environment beside this one (this torch, that triton), made once.
triton_device_version() {
  local spec=${TRITON_DEVICE_SPEC:-triton==3.6.0} venv=build/venv-triton-device
  [ -x $venv/bin/python ] || $PY -m venv --system-site-packages $venv || return 1
  if ! $venv/bin/python -c "import sys, triton; sys.exit(triton.__version__ != '${spec#triton==}')" 2>/dev/null; then
    $venv/bin/python -m pip install -q --no-deps "$spec" || return 1
  fi
  env PYTHONPATH="$PWD" TRITON_DEFAULT_FP_FUSION=1 $venv/bin/python scripts/triton_aot_check.py --arch 90
}
stage "Triton kernels compiled (the GPU machines' triton, sm_90)" triton_device_version

emulated_cuda() {  # the CUDA kernels run on the CPU (csrc/tests/cuda_emu), memory accesses checked by ASan
  local asan; asan=$(${CXX:-g++} -print-file-name=libasan.so 2>/dev/null)
  if [ -z "$asan" ] || [ ! -f "$asan" ]; then
    echo "no libasan for ${CXX:-g++}: the emulated kernels run without AddressSanitizer"
    $PY -m pytest tests/cuda_emu -q -p no:cacheprovider; return $?
  fi
  # --capture=sys: an ASan report (written to fd 2 before the process aborts) reaches the log
  env FASTDENOISE_EMU_ASAN=1 LD_PRELOAD="$asan" ASAN_OPTIONS=detect_leaks=0 \
    $PY -m pytest tests/cuda_emu -q -p no:cacheprovider --capture=sys
}
stage "CUDA kernels emulated (ASan)" emulated_cuda

nvcc_all() {  # every kernel file for sm_90 and sm_80; fails on a kernel with local memory
  # (ptxas -v: a stack frame or spills), which the GPU pays in every thread
  if ! command -v nvcc >/dev/null; then echo "nvcc not found: CUDA kernel compile skipped"; return 0; fi
  local out; out=$(mktemp -d); local rc=0 n=0 f arch
  for f in csrc/cuda/kernels/*.cu; do
    for arch in 90 80; do
      echo "nvcc -arch=sm_$arch $f"; n=$((n + 1))
      # with the half/bfloat16 macros torch's extension build passes to nvcc
      nvcc -std=c++17 -O3 -arch=sm_$arch -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
        -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ -Xptxas -v \
        -Icsrc/include -c "$f" -o "$out/$(basename "$f").o" 2>"$out/ptxas.log" || { cat "$out/ptxas.log"; rc=1; continue; }
      # "Function properties for NAME" then "S bytes stack frame, T bytes spill stores, L bytes spill loads"
      awk '/Function properties for/ {fn = $NF}
           /bytes stack frame/ {if ($1 + $5 + $9 > 0) {print "  local memory: " $0 " in " fn; bad = 1}}
           END {exit bad}' "$out/ptxas.log" | c++filt || rc=1
      grep -v -e 'ptxas info' -e 'bytes stack frame' "$out/ptxas.log"      # nvcc's warnings, if any
      grep -c "Used [0-9]* registers" "$out/ptxas.log" | sed 's/^/  kernels: /'
    done
  done
  echo "$n compilations, rc=$rc"; rm -rf "$out"; return $rc
}
stage "nvcc kernels (sm_90, sm_80)" nvcc_all

cxx_standards() {  # the C++ sources under both standards torch builds extensions with
  # torch >= 2.13 passes -std=c++20, older torch (2.11 on the GPU machines) -std=c++17: every
  # source must compile under both, but this machine's torch only ever builds with one of them.
  # The CUDA glue against torch's headers and CUDA's (a CPU wheel of torch lacks one generated
  # header of c10/cuda, which only sets a build macro: stubbed). torch's headers are -isystem:
  # their own C++20-extension warnings under C++17 stay quiet, ours do not.
  local inc; inc=$($PY -c "import sysconfig, torch.utils.cpp_extension as c; print(' '.join('-isystem '+p for p in c.include_paths()), '-isystem '+sysconfig.get_paths()['include'])")
  local stub; stub=$(mktemp -d)
  mkdir -p "$stub/c10/cuda/impl"; echo "#define C10_CUDA_BUILD_SHARED_LIBS" > "$stub/c10/cuda/impl/cuda_cmake_macros.h"
  local files="csrc/fastdenoise.cpp csrc/cpu/*.cpp" cuda_inc=${CUDA_HOME:-/usr/local/cuda}/include
  if [ -d "$cuda_inc" ]; then files="$files csrc/cuda/*.cpp"; else echo "no CUDA headers: the CUDA glue is not checked"; fi
  local rc=0
  # one g++ per (standard, file), as many at once as there are cores; xargs fails if any does
  # shellcheck disable=SC2086
  printf '%s\n' $files | sed 's/^/c++17 /; p; s/^c++17/c++20/' |
    FD_FLAGS="-I$stub $inc -Icsrc/include -Icsrc -Ibuild/generated -I$cuda_inc" xargs -P "$(nproc)" -L 1 \
      sh -c 'echo "g++ -std=$0 -fsyntax-only $1" && exec g++ -std="$0" -fsyntax-only $FD_FLAGS "$1"' || rc=1
  rm -rf "$stub"; return $rc
}
stage "C++17 / C++20 syntax" cxx_standards

cmake_build() {
  local prefix; prefix=$($PY -c "import torch; print(torch.utils.cmake_prefix_path)")
  local dir=build/cmake
  cmake -S . -B $dir -G Ninja -DCMAKE_PREFIX_PATH="$prefix" -DPython_EXECUTABLE="$(command -v $PY)" >/dev/null &&
    cmake --build $dir -j2 &&
    ctest --test-dir $dir --output-on-failure &&
    $PY scripts/check_op_names.py fastdenoise/_C*.so $dir/_C*.so
}
stage "CMake + ctest + op names" cmake_build

# a user's `pip install fastdenoise-0.1.0.tar.gz`: the sdist carries every source, the wheel built
# from it alone installs outside the checkout, loads its extension and matches the references
stage "sdist -> wheel -> import" $PY scripts/sdist_check.py --wheel

stage "benchmarks (smoke)" $PY -m pytest benchmarks -q --benchmark-disable -p no:cacheprovider

echo; echo "=== summary"
printf '%s\n' "${RESULTS[@]}"
exit $FAILED
