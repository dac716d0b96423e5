#!/usr/bin/env bash
# Compile and link the C++ extension (CPU kernels and CUDA bindings) against another torch release's headers and
# libraries without installing it: the proof that the sources build for torch 2.11, the supported floor, on a machine
# that may not install a CUDA build of torch. The .cu kernels need no torch header (tests/build/test_cuda_compile.py).
#
#   bash scripts/compile_against_torch.sh 2.11.0        # downloads that wheel (~530 MB) to a temporary folder
#
# It compiles and links only: a CUDA build of torch cannot be imported without its CUDA runtime packages, so the
# result is not loaded. Needs pip (to download), a C++ compiler and, for the CUDA bindings, the CUDA headers
# (CUDA_HOME, default: the toolkit of nvcc on PATH).
set -euo pipefail
VERSION="${1:?usage: compile_against_torch.sh TORCH_VERSION}"
cd "$(dirname "$0")/.."
ROOT="$PWD"
PY="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gencore-torch-$VERSION.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
"$PY" -m pip download "torch==$VERSION" --no-deps -d "$WORK" -q
WHEEL="$(ls "$WORK"/torch-*.whl)"
(cd "$WORK" && "$PY" -c "import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
z.extractall(members=[n for n in z.namelist() if n.startswith('torch/include/') or
                      (n.startswith('torch/lib/') and n.endswith('.so'))])" "$WHEEL")
T="$WORK/torch"
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null; then
  CUDA_HOME="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
  [ -f "$CUDA_HOME/include/cuda_runtime_api.h" ] || CUDA_HOME="$(ls -d /usr/local/cuda* 2>/dev/null | head -1)"
fi
PYINC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
FLAGS=(-DNDEBUG -fwrapv -O1 -Wall -Wno-unknown-pragmas -fPIC -I"$ROOT/csrc" -I"$T/include"
       -I"$T/include/torch/csrc/api/include" -I"$PYINC" -fopenmp -fno-math-errno -Wno-unused-parameter
       -DGENCORE_CPU_ISA=\"generic\" -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C -std=c++20)
mkdir -p "$WORK/obj"
status=0
for f in csrc/*.cpp; do
  echo "compiling $f against torch $VERSION"
  c++ "${FLAGS[@]}" -c "$f" -o "$WORK/obj/$(basename "$f" .cpp).o" || status=1
done
if [ -n "${CUDA_HOME:-}" ] && [ -f "$CUDA_HOME/include/cuda_runtime_api.h" ] && [ -d "$T/include/c10/cuda" ]; then
  for f in csrc/cuda/*.cpp; do
    echo "compiling $f (CUDA binding) against torch $VERSION"
    c++ "${FLAGS[@]}" -DGENCORE_WITH_CUDA=1 -I"$CUDA_HOME/include" -c "$f" -o "$WORK/obj/cuda_$(basename "$f" .cpp).o" \
      || status=1
  done
else
  echo "skipping the CUDA bindings: no CUDA headers, or a CPU build of torch"
fi
[ "$status" -eq 0 ] || { echo "compilation against torch $VERSION failed"; exit 1; }
c++ -shared "$WORK"/obj/*.o -L"$T/lib" -lc10 -ltorch -ltorch_cpu -ltorch_python -fopenmp -o "$WORK/_C.so"
echo "compiled and linked against torch $VERSION: $(ls "$WORK"/obj | wc -l) objects, _C.so $(stat -c %s "$WORK/_C.so") bytes"
