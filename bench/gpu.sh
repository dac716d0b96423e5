#!/usr/bin/env bash
# One command on a GPU machine (written for an H100): install gencore with its CUDA kernels, run the whole test suite
# on the GPU, then the GPU benchmarks. Everything lands in one results folder.
#
#   bash bench/gpu.sh                       # from the repo root or anywhere; results in out/gpu-<UTC time>/
#
# Needs: Python 3.10+, a CUDA build of torch already installed (this script never installs torch, so it keeps the
# machine's), a CUDA toolkit (nvcc) matching it, a C++ compiler. Knobs (environment):
#   GENCORE_CUDA_ARCHS   compute capabilities to build for (default 9.0: H100)
#   GENCORE_GPU_OUT      results folder (default out/gpu-<UTC time>)
#   GENCORE_BENCH_MIN_TIME   seconds of timing per `gencore bench` case (default 0.5)
#   PYTHON               the interpreter to use (default python3)
#   MAX_JOBS             parallel compile jobs (default: the number of CPUs)
#
# Outputs in the results folder:
#   env.txt            GPU, driver, torch / CUDA versions, `gencore info`
#   install.log        pip install + CUDA build
#   tests.log, tests.xml   `pytest -m "gpu or not gpu"`: every test, GPU ones included (junit XML for tooling)
#   bench.md           `gencore bench --device cuda`: the markdown ratio table (fused/eager, fused/compile, GB/s)
#   bench.json, bench.log  `pytest bench --benchmark-only` (pytest-benchmark's JSON)
# The exit status is non-zero if the install, the tests or a benchmark failed; later steps still run after a failed
# test step so one call always yields the numbers.
set -uo pipefail

cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT="${GENCORE_GPU_OUT:-out/gpu-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
export GENCORE_CUDA_ARCHS="${GENCORE_CUDA_ARCHS:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
status=0

step() { printf '\n=== %s ===\n' "$*"; }
# The `gencore` command of this interpreter (the console script may belong to another Python on PATH).
gencore_cli() { "$PY" -c 'import sys; from gencore.cli import main; sys.exit(main(sys.argv[1:]))' "$@"; }

step "checking the machine"
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi >/dev/null 2>&1; then
  echo "no working nvidia-smi: this script needs a GPU machine" >&2
  exit 2
fi
if ! "$PY" - <<'EOF'
import sys
import torch
if torch.version.cuda is None or not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} is not a CUDA build or sees no GPU; install the CUDA build of torch first")
EOF
then
  exit 2
fi
TORCH_BEFORE="$("$PY" -c 'import torch; print(torch.__version__)')"
{
  nvidia-smi
  "$PY" -c 'import torch, sys; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda); print("device", torch.cuda.get_device_name(), torch.cuda.get_device_capability())'
  command -v nvcc >/dev/null && nvcc --version
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

step "installing gencore with CUDA kernels (archs $GENCORE_CUDA_ARCHS) -> $OUT/install.log"
if ! "$PY" -m pip install setuptools wheel ninja >"$OUT/install.log" 2>&1 \
   || ! "$PY" -m pip install --no-build-isolation -e ".[test]" >>"$OUT/install.log" 2>&1; then
  tail -50 "$OUT/install.log"
  echo "install failed; see $OUT/install.log" >&2
  exit 1
fi
TORCH_AFTER="$("$PY" -c 'import torch; print(torch.__version__)')"
if [ "$TORCH_BEFORE" != "$TORCH_AFTER" ]; then
  echo "pip replaced torch ($TORCH_BEFORE -> $TORCH_AFTER): the results would not be for this machine's torch" >&2
  exit 1
fi
gencore_cli info | tee -a "$OUT/env.txt"
if ! "$PY" -c 'import sys, gencore; sys.exit(0 if "cuda" in gencore.available_backends() else 1)'; then
  echo "the cuda backend is not available after the build (see gencore info above and $OUT/install.log)" >&2
  exit 1
fi

step "tests, GPU included -> $OUT/tests.log"
"$PY" -m pytest -m "gpu or not gpu" -ra --junitxml="$OUT/tests.xml" 2>&1 | tee "$OUT/tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "tests failed (continuing to the benchmarks)" >&2; status=1; }

step "gencore bench --device cuda -> $OUT/bench.md"
gencore_cli bench --device cuda --min-time "${GENCORE_BENCH_MIN_TIME:-0.5}" >"$OUT/bench.md" 2>"$OUT/bench_table.log"
[ $? -eq 0 ] || { cat "$OUT/bench_table.log" >&2; echo "gencore bench failed" >&2; status=1; }
cat "$OUT/bench.md"

step "pytest bench --benchmark-only -> $OUT/bench.json"
"$PY" -m pytest bench --benchmark-only --benchmark-json="$OUT/bench.json" --benchmark-columns=min,median,mean,rounds \
  -q 2>&1 | tee "$OUT/bench.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "pytest bench failed" >&2; status=1; }

step "done: results in $OUT (exit status $status)"
exit "$status"
