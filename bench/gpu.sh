#!/usr/bin/env bash
# One call on a GPU machine with no network: build gencore's CUDA kernels for the GPU found, run what needs a GPU
# (the cuda and triton cases of every op's tests against the reference, the GPU-marked tests), then the GPU
# benchmark table. Every step runs under its own `timeout`, so the script always reaches its last step and writes a
# summary; the whole run is sized for under 9 minutes on an H200, so it fits a job limited to 10 minutes.
#
#   bash bench/gpu.sh              # results in $OUT when it is set (e.g. the folder a batch job collects),
#                                  # else in out/gpu-<UTC time>/
#   bash bench/gpu.sh --dry-run    # print the steps and check paths and tools, run nothing (works without a GPU)
#
# Installs nothing from the network: `pip install --no-deps --no-index --no-build-isolation -e .` builds against
# the machine's CUDA build of torch (2.11 or later) with the packages already there; nothing needs diffusers.
# Knobs (environment): GENCORE_CUDA_ARCHS (default: the compute capability of GPU 0), MAX_JOBS (default: all
# cores), PYTHON (default python3), GENCORE_BENCH_MIN_TIME (seconds per bench case, default 0.2), and the step
# limits in seconds GPU_T_BUILD (200), GPU_T_TESTS (120), GPU_T_BENCH (120), GPU_T_LOOPS (50).
#
# Results folder: env.txt (GPU, driver, versions, gencore info), install.log, tests.log + tests.xml, bench.md (the
# markdown table), sampling.md (eager vs captured sampling loops), summary.txt (each step's exit status and seconds). Exit status: non-zero if any step
# failed; the later steps still run.
set -uo pipefail

DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
cd "$(dirname "$0")/.."
ROOT="$PWD"
PY="${PYTHON:-python3}"
# $OUT, when set, names the results folder its caller collects: write there, never reassign it.
RESULTS="${OUT:-$ROOT/out/gpu-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$RESULTS"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INDEX=1
T_BUILD="${GPU_T_BUILD:-200}" T_TESTS="${GPU_T_TESTS:-120}" T_BENCH="${GPU_T_BENCH:-120}" T_LOOPS="${GPU_T_LOOPS:-50}"
status=0
: >"$RESULTS/summary.txt"

# run NAME LIMIT_S LOG COMMAND...: one step under `timeout`, its output to LOG (and the screen), its status and
# seconds to summary.txt. A step that fails or times out marks the run failed; the next step runs anyway.
run() {
  local name="$1" limit="$2" log="$3"
  shift 3
  printf '\n=== %s (limit %ss) -> %s ===\n' "$name" "$limit" "$log"
  if [ "$DRY_RUN" -eq 1 ]; then
    printf 'would run: timeout -k 10 %s %s\n' "$limit" "$*"
    echo "$name dry-run limit=${limit}s" >>"$RESULTS/summary.txt"
    return 0
  fi
  local t0=$SECONDS
  timeout -k 10 "$limit" "$@" >"$log" 2>&1
  local rc=$?
  tail -n 40 "$log"
  [ "$rc" -eq 124 ] && echo "$name: timed out after ${limit}s" >&2
  [ "$rc" -ne 0 ] && status=1
  echo "$name rc=$rc seconds=$((SECONDS - t0)) limit=${limit}s" >>"$RESULTS/summary.txt"
  return "$rc"
}

printf '=== checking the machine ===\n'
for tool in timeout "$PY"; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null; then
  # torch finds CUDA_HOME from nvcc on PATH only sometimes; the toolkit is the folder above nvcc's bin/.
  CUDA_HOME="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
  export CUDA_HOME
fi
echo "CUDA_HOME=${CUDA_HOME:-unset}  results: $RESULTS"
if [ "$DRY_RUN" -eq 0 ]; then
  if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.version.cuda and torch.cuda.is_available() else 1)'; then
    echo "torch sees no CUDA GPU here; run with --dry-run to check the script without one" >&2
    exit 2
  fi
  if [ -z "${GENCORE_CUDA_ARCHS:-}" ]; then
    GENCORE_CUDA_ARCHS="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))')"
  fi
  {
    nvidia-smi 2>&1 || true
    "$PY" -c 'import sys, torch, triton; print("python", sys.version.split()[0]); print("torch", torch.__version__,
"cuda", torch.version.cuda, "triton", triton.__version__); print("device", torch.cuda.get_device_name(0),
torch.cuda.get_device_capability(0))'
    command -v nvcc >/dev/null && nvcc --version
  } >"$RESULTS/env.txt" 2>&1
  cat "$RESULTS/env.txt"
fi
export GENCORE_CUDA_ARCHS="${GENCORE_CUDA_ARCHS:-9.0}"

run "build (CUDA archs $GENCORE_CUDA_ARCHS, $MAX_JOBS jobs)" "$T_BUILD" "$RESULTS/install.log" \
  "$PY" -m pip install --no-deps --no-index --no-build-isolation -e .

if [ "$DRY_RUN" -eq 0 ]; then
  "$PY" -m gencore.cli info >>"$RESULTS/env.txt" 2>&1 || true
fi

# What needs a GPU: the cuda and triton cases of every op's tests (every dtype, layout and gradient against the
# reference), the GPU-marked tests (streams, CUDA-graph capture of a sampling loop, opcheck and compile on CUDA).
run "GPU tests" "$T_TESTS" "$RESULTS/tests.log" \
  "$PY" -m pytest -q -ra -p no:cacheprovider --junitxml="$RESULTS/tests.xml" \
  tests/ops/test_group_norm_silu.py tests/ops/test_group_norm_silu_gpu.py tests/ops/test_sampler_step.py \
  tests/ops/test_gradient_penalty.py tests/ops/test_fake_devices.py tests/library/test_diffusion_sampling.py -k "cuda or triton or gpu"

run "GPU benchmark table" "$T_BENCH" "$RESULTS/bench.md" \
  "$PY" -m gencore.cli bench --device cuda --min-time "${GENCORE_BENCH_MIN_TIME:-0.2}"

# Whole sampling loops, eager against one captured CUDA graph (DDIM 50 and DPM-Solver++ 20 steps).
run "sampling loops: eager vs CUDA graph" "$T_LOOPS" "$RESULTS/sampling.md" "$PY" bench/gpu_sampling.py

printf '\n=== summary (%s) ===\n' "$RESULTS/summary.txt"
cat "$RESULTS/summary.txt"
exit "$status"
