#!/usr/bin/env bash
# Build the C++ extension with AddressSanitizer + UndefinedBehaviorSanitizer in a separate folder (a copy of the
# committed tree; this checkout's build is untouched) and run the op tests of the cpu backend under it.
#
#   bash scripts/sanitize.sh [pytest args...]      # default: the op test modules, cpu and reference cases
#
# The sanitizer runtime must be loaded before Python: LD_PRELOAD of libasan and libstdc++ (without the latter,
# C++ exceptions thrown by the kernels' argument checks do not unwind through ASan's interceptors). Leak detection
# is off (CPython and torch keep allocations to exit). Any report fails the run (halt_on_error).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PY="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gencore-sanitize.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
git -C "$ROOT" ls-files -z | (cd "$ROOT" && xargs -0 cp --parents -t "$WORK")
echo "building with -fsanitize=address,undefined in $WORK"
(cd "$WORK" && GENCORE_SANITIZE=1 GENCORE_SKIP_CUDA=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
  "$PY" setup.py build_ext --inplace >"$WORK/build.log" 2>&1) || { tail -30 "$WORK/build.log"; exit 1; }
ASAN_LIB="$(gcc -print-file-name=libasan.so)"
STDCXX_LIB="$(gcc -print-file-name=libstdc++.so)"
if [ $# -eq 0 ]; then
  set -- tests/ops/test_group_norm_silu.py tests/ops/test_sampler_step.py tests/ops/test_gradient_penalty.py \
    tests/ops/test_fake_devices.py tests/ops/test_properties.py tests/ops/test_cpu_output_cache.py \
    -k "cpu or reference" -q -p no:cacheprovider
fi
cd "$WORK"
LD_PRELOAD="$ASAN_LIB $STDCXX_LIB" \
ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
PYTHONPATH="$WORK" GENCORE_BACKEND= \
  "$PY" -c 'import gencore, sys; assert gencore.__file__.startswith(sys.argv[1]), gencore.__file__' "$WORK"
LD_PRELOAD="$ASAN_LIB $STDCXX_LIB" \
ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
PYTHONPATH="$WORK" \
  "$PY" -m pytest "$@"
echo "sanitizer run clean"
