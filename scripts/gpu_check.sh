#!/usr/bin/env bash
# One call on a GPU machine: build the CUDA extension, run every test (the CUDA ones included),
# the Triton tests on the GPU, compute-sanitizer on the CUDA kernel tests, and the benchmarks with
# their markdown report. Everything lands in OUTDIR.
#
#   bash scripts/gpu_check.sh OUTDIR
#
# Needs: an NVIDIA GPU, a CUDA build of torch, nvcc, triton, pytest, pytest-benchmark (and
# compute-sanitizer for that stage). No network: nothing is downloaded; the build uses the
# setuptools / ninja / pybind11 already installed (`pip install --no-build-isolation --no-deps
# --no-index -e .`, else `python setup.py build_ext --inplace`).
#
# Stages (each logs to OUTDIR/NN-name.log and adds a line to OUTDIR/summary.txt):
#   nvidia-smi, build, info, tests (the @pytest.mark.cuda tests and tests/test_ext.py; junit:
#   OUTDIR/junit-tests.xml, junit-ext.xml), triton (all of tests/triton on the GPU; junit-triton.xml),
#   sanitizer, bench-haar (bench_haar.json), bench-models (bench_models.json), bench-classic
#   (bench_classic.json: NLM, block matching, BM3D), bench-norm-gate (bench_norm_gate.json:
#   layer norm over channels and the gates), bench-patch (bench_patch.json: NAFNet, MPRNet and
#   RIDNet before and after fastdenoise.patch), bench-restormer-ops (bench_restormer_ops.json:
#   MDTA core and block, dwconv_gate, GDFN block, the 1x1 + depthwise input stage),
#   bench-tiling (bench_tiling.json: tiled vs untiled, huge host-resident images, the
#   StreamDenoiser frame rate), ncu (ncu.md: the DRAM bytes each op benchmark's eager and fused
#   contenders really move, from Nsight Compute, against the op's minimum; ncu_ops.ncu-rep,
#   ncu_ops.csv, ncu_cases.jsonl beside it), report (bench.md).
# A failed stage does not stop the run; the script exits non-zero if any stage failed.
#
# Time: the whole run is held to GPU_CHECK_BUDGET_S seconds (default 520, so it ends within
# ~9 minutes with the start-up); each stage also has its own cap, and a stage that hits its
# limit is interrupted (SIGINT: the benchmarks still write the JSON of what they measured) and
# counted as failed. Later stages that find no time left are recorded as skipped (failed).
#
# Environment:
#   PYTHON                 interpreter (default: python3, else python)
#   TORCH_CUDA_ARCH_LIST   default "9.0" (H100 / H200)
#   MAX_JOBS               default: nproc
#   GPU_CHECK_BUDGET_S     whole-run time budget in seconds (default 520)
#   GPU_CHECK_ONLY         space-separated stage names to run (default: all); the others are
#                          recorded as "not selected" and do not fail the run
#   BENCH_ARGS             extra arguments for both benchmark runs (e.g. "--bench-compile no")
#   NCU_BENCH_ARGS         extra arguments for the benchmarks run under ncu (e.g. "-k mdta")
#
# Real data: the tests read ../shared beside the checkout, which does not travel to a GPU machine.
# Copy it into an ignored folder of the checkout first and carry it, e.g. here:
#   echo /.shared/ >> .git/info/exclude; cp -r ../shared .shared
# and run with FASTDENOISE_SHARED=.shared (the default when ../shared is absent and .shared exists).
#
# If the whole run does not fit one session's time limit, split it (the build is kept in the
# working tree between the calls):
#   GPU_CHECK_ONLY="nvidia-smi build info tests triton sanitizer" bash scripts/gpu_check.sh OUT1
#   GPU_CHECK_ONLY="bench-haar bench-models bench-classic report" bash scripts/gpu_check.sh OUT2
#   GPU_CHECK_ONLY="bench-norm-gate bench-restormer-ops ncu report" bash scripts/gpu_check.sh OUT3
# Where only a few files can be brought back from the machine, bundle the folder afterwards:
#   tar -czf gpu_check.tgz -C OUTDIR .
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
mkdir -p "$1"
OUTDIR=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
REPO=$(pwd)

PY=${PYTHON:-$(command -v python3 || command -v python || true)}
if [ -z "$PY" ]; then echo "no python3 / python on PATH" >&2; exit 2; fi
# Console scripts installed beside the interpreter (ninja, pytest) come first on PATH.
PATH="$("$PY" -c 'import os, sys; print(os.path.dirname(sys.executable))'):$PATH"
export PY OUTDIR REPO PATH
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_INDEX=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export FORCE_CUDA=1
unset TRITON_INTERPRET FASTDENOISE_BACKEND || true
if [ -z "${FASTDENOISE_SHARED:-}" ] && [ ! -d "$REPO/../shared" ] && [ -d "$REPO/.shared" ]; then
  export FASTDENOISE_SHARED="$REPO/.shared"
fi

BUDGET=${GPU_CHECK_BUDGET_S:-520}
ONLY=${GPU_CHECK_ONLY:-}
BENCH_ARGS=${BENCH_ARGS:-}
export BENCH_ARGS
SUMMARY=$OUTDIR/summary.txt
START=$SECONDS
FAILED=0
N=0
: >"$SUMMARY"
echo "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) repo=$REPO commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown) python=$PY budget=${BUDGET}s" | tee -a "$SUMMARY"

# stage NAME CAP_SECONDS FUNCTION [RESERVE]: run FUNCTION (a shell function, in a child bash)
# under a time limit of min(CAP, what is left of the budget minus RESERVE seconds kept for the
# stages after it; default 15, for the report), log to a file, record the outcome. RESERVE
# "always" runs the stage for CAP seconds whatever is left (the report: a second's work).
# Never exits the script.
stage() {
  local name=$1 cap=$2 fn=$3 reserve=${4:-15}
  N=$((N + 1))
  local log; log=$(printf '%s/%02d-%s.log' "$OUTDIR" "$N" "$name")
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then
    printf '%-14s %-28s %6s\n' "$name" "not selected" "-" | tee -a "$SUMMARY"
    return 0
  fi
  local left
  if [ "$reserve" = always ]; then left=$cap; else left=$((BUDGET - (SECONDS - START) - reserve)); fi
  if [ "$left" -lt 10 ]; then
    FAILED=1
    printf '%-14s %-28s %6s\n' "$name" "SKIPPED (time budget spent)" "-" | tee -a "$SUMMARY"
    return 0
  fi
  local limit=$cap
  if [ "$left" -lt "$limit" ]; then limit=$left; fi
  echo
  echo "=== [$name] limit ${limit}s, log $(basename "$log")"
  local t0=$SECONDS rc=0
  export -f "$fn"
  set +e
  timeout --signal=INT --kill-after=20 "$limit" bash -c "set -eo pipefail; $fn" >"$log" 2>&1
  rc=$?
  set -e
  tail -n 8 "$log" | sed 's/^/    /'
  local status
  case $rc in
    0) status="ok" ;;
    124|137) status="FAILED (time limit ${limit}s)"; FAILED=1 ;;
    5) status="FAILED (no tests collected)"; FAILED=1 ;;
    *) status="FAILED rc=$rc"; FAILED=1 ;;
  esac
  printf '%-14s %-28s %5ss\n' "$name" "$status" "$((SECONDS - t0))" | tee -a "$SUMMARY"
  return 0
}

# ------------------------------------------------------------------------------------ stages

s_nvidia_smi() {
  nvidia-smi
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv
}

s_build() {
  echo "FORCE_CUDA=$FORCE_CUDA TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"
  "$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'available', torch.cuda.is_available())"
  command -v nvcc && nvcc --version | tail -n 2
  # Some of torch's CUDA headers include cuBLAS / cuSPARSE / cuSOLVER ones. fastdenoise's sources
  # include none of those today (a build against a toolkit without them was checked), but where
  # the toolkit beside nvcc lacks them, those of torch's CUDA pip packages (nvidia/cu13/include,
  # or nvidia/<lib>/include in older layouts) are searched after it (CPATH: after the -I folders),
  # so a source that comes to need them still builds here.
  local cuda_home; cuda_home=$("$PY" -c "from torch.utils.cpp_extension import CUDA_HOME; print(CUDA_HOME or '')")
  if [ -n "$cuda_home" ] && [ ! -f "$cuda_home/include/cublas_v2.h" ]; then
    local extra; extra=$("$PY" -c "import glob, os, site; print(':'.join(sorted(d for sp in site.getsitepackages() for d in glob.glob(os.path.join(sp, 'nvidia', '*', 'include')))))")
    echo "no cublas_v2.h under $cuda_home/include: CPATH += ${extra:-nothing found}"
    if [ -n "$extra" ]; then export CPATH="${CPATH:+$CPATH:}$extra"; fi
  fi
  local built=0
  if "$PY" -c "import setuptools, ninja, pybind11" 2>/dev/null; then
    echo "--- pip install --no-build-isolation --no-deps --no-index -e ."
    if "$PY" -m pip install --no-build-isolation --no-deps --no-index -v -e .; then
      built=1
    else
      echo "--- pip editable install failed: falling back to setup.py build_ext --inplace"
    fi
  else
    echo "--- setuptools / ninja / pybind11 not all importable: setup.py build_ext --inplace"
  fi
  if [ $built -eq 0 ]; then
    "$PY" setup.py build_ext --inplace
  fi
  # The build must have produced the CUDA kernels, and the package must load them.
  "$PY" - <<'EOF'
import json, fastdenoise
info = fastdenoise.build_info()
print(json.dumps(info, indent=1))
assert info["loaded"], f"fastdenoise._C did not load: {info.get('error')}"
assert info["cuda"], "fastdenoise._C was built without CUDA"
missing = [op for op, keys in info["ops"].items() if "CUDA" not in keys]
print("ops without a CUDA kernel:", missing or "none")
assert "CUDA" in info["ops"].get("fastdenoise::haar_dwt2d", []), "no CUDA kernel for haar_dwt2d"
EOF
}

s_info() {
  "$PY" -m fastdenoise.info
}

s_tests() {
  # The GPU tests (@pytest.mark.cuda) and the extension's load / build-info tests, not the rest:
  # it runs on CPU tensors only, which CI covers on every change, and would spend lease time
  # here. tests/triton runs in its own process (next stage).
  "$PY" -m pytest tests -q -rs --ignore=tests/triton -p no:cacheprovider -m cuda \
    --junitxml="$OUTDIR/junit-tests.xml" --durations=15
  "$PY" -m pytest tests/test_ext.py -q -rs -p no:cacheprovider --junitxml="$OUTDIR/junit-ext.xml"
}

s_triton() {
  env -u TRITON_INTERPRET "$PY" -m pytest tests/triton -q -rs -p no:cacheprovider \
    --junitxml="$OUTDIR/junit-triton.xml" --durations=10
}

s_sanitizer() {
  command -v compute-sanitizer
  # No caching allocator: memcheck then sees each tensor's own bounds.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 99 \
    --print-limit 20 --target-processes all \
    "$PY" -m pytest tests/ops/test_haar.py tests/ops/test_block_match.py tests/ops/test_nlm.py tests/ops/test_bm3d.py \
    tests/ops/test_overlap_add.py -q -x \
    -p no:cacheprovider -k "cuda_kernel or cuda_default_dispatch"
  # The Triton kernels whose masked loads reach outside the tensor (the 3x3 halos: negative and
  # past-the-end offsets that the masks must keep from being dereferenced), float32 cases.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 99 \
    --print-limit 20 --target-processes all \
    "$PY" -m pytest tests/triton/test_dwconv_gate_triton.py tests/triton/test_pwdw_triton.py -q -x \
    -p no:cacheprovider -k "matches_reference and float32"
}

bench_suite() {  # bench_suite NAME: benchmarks/bench_NAME.py on the GPU -> OUTDIR/bench_NAME.json
  # shellcheck disable=SC2086
  "$PY" -m pytest "benchmarks/bench_$1.py" -q -p no:cacheprovider --bench-device cuda \
    --benchmark-json "$OUTDIR/bench_$1.json" --benchmark-columns=median,iqr,rounds $BENCH_ARGS
}
export -f bench_suite   # the stages run in their own `bash -c`
s_bench_haar() { bench_suite haar; }
s_bench_models() { bench_suite models; }
s_bench_classic() { bench_suite classic; }
s_bench_norm_gate() { bench_suite norm_gate; }
s_bench_patch() { bench_suite patch; }
s_bench_restormer_ops() { bench_suite restormer_ops; }
s_bench_tiling() { bench_suite tiling; }

s_ncu() {
  # The op benchmarks once more, under Nsight Compute: each eager / fused contender's call is
  # profiled behind a marker kernel (--bench-ncu-log, benchmarks/conftest.py), with only the
  # DRAM byte counters and the kernel time collected (one pass per kernel). Clocks are left
  # alone (--clock-control none, as the device notes ask). No torch.compile here: its kernels
  # are timed by the bench-* stages, and compiling them again would cost minutes.
  command -v ncu
  ncu --version | tail -n 1
  local cases="$OUTDIR/ncu_cases.jsonl" rep="$OUTDIR/ncu_ops"
  rm -f "$cases" "$rep.ncu-rep"
  local rc=0
  # shellcheck disable=SC2086
  ncu --profile-from-start off --clock-control none --target-processes all \
    --metrics dram__bytes_read.sum,dram__bytes_write.sum,gpu__time_duration.sum \
    --export "$rep" --force-overwrite \
    "$PY" -m pytest benchmarks/bench_norm_gate.py benchmarks/bench_restormer_ops.py benchmarks/bench_haar.py \
    -q -p no:cacheprovider --bench-device cuda --benchmark-disable --bench-compile no \
    --bench-ncu-log "$cases" ${NCU_BENCH_ARGS:-} || rc=$?
  # A failed benchmark still leaves the others' measurements: report them, then fail the stage.
  ncu --import "$rep.ncu-rep" --csv --page details --print-units base >"$OUTDIR/ncu_ops.csv"
  "$PY" benchmarks/ncu_report.py "$OUTDIR/ncu_ops.csv" "$cases" -o "$OUTDIR/ncu.md"
  sed -n '/^## Summary/,/^## Kernels/p' "$OUTDIR/ncu.md" | sed '$d'
  return $rc
}

s_report() {
  local files=()
  for f in "$OUTDIR/bench_haar.json" "$OUTDIR/bench_models.json" "$OUTDIR/bench_classic.json" \
           "$OUTDIR/bench_norm_gate.json" "$OUTDIR/bench_patch.json" \
           "$OUTDIR/bench_restormer_ops.json" "$OUTDIR/bench_tiling.json"; do
    [ -s "$f" ] && files+=("$f")
  done
  if [ ${#files[@]} -eq 0 ]; then
    echo "no benchmark JSON to report"
    return 1
  fi
  "$PY" benchmarks/report.py "${files[@]}" -o "$OUTDIR/bench.md"
  sed -n '/^## Summary/,/^## Groups/p' "$OUTDIR/bench.md"
}

# name          cap(s) function       [reserve]
stage nvidia-smi    30 s_nvidia_smi
stage build        240 s_build
stage info          60 s_info
stage tests        180 s_tests
stage triton       120 s_triton
stage sanitizer    180 s_sanitizer
stage bench-haar   240 s_bench_haar   60
stage bench-models 240 s_bench_models 45
stage bench-classic 120 s_bench_classic 25
stage bench-norm-gate 120 s_bench_norm_gate 20
stage bench-patch  300 s_bench_patch  20
stage bench-restormer-ops 300 s_bench_restormer_ops 20
stage bench-tiling 300 s_bench_tiling 20
stage ncu          300 s_ncu          20
stage report        60 s_report always

echo
echo "=== summary ($((SECONDS - START))s) — $SUMMARY"
cat "$SUMMARY"
if [ -s "$OUTDIR/bench.md" ]; then
  echo
  sed -n '/^## Summary/,/^## Groups/p' "$OUTDIR/bench.md" | sed '$d'
fi
if [ -s "$OUTDIR/ncu.md" ]; then
  echo
  sed -n '/^## Summary/,/^## Kernels/p' "$OUTDIR/ncu.md" | sed '$d'
fi
exit $FAILED
