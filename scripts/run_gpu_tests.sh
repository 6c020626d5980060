#!/usr/bin/env bash
# One command for the GPU machine: builds the CUDA ops test (Release, sm_90) in build-gpu and runs
# it: every CUDA op against the CPU op, printing per-op max errors and real-shape timings (median
# of 10 CUDA-event-timed runs). Exit status is the test's (0 = all passed).
#
# The GPU image has nvcc, CMake and ninja but not the project's C++ dependencies (fmt,
# nlohmann-json, CLI11, GoogleTest, OpenBLAS), so this builds the self-contained project in
# scripts/gpu_test/ (the .cu files, the three CPU reference kernels, tests/test_cuda_ops.cpp against
# a tiny GoogleTest stand-in) rather than the whole tree. Where the full dependencies exist, the
# same test also runs as `ctest -L gpu` in a normal build.
#
# Needs .gpu-deps/ (nlohmann/json), made by scripts/gpu_deps.sh here and carried along.
#
# Usage (from anywhere): scripts/run_gpu_tests.sh [extra cmake args...]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${BUILD_DIR:-$ROOT/build-gpu}

if [[ ! -f "$ROOT/.gpu-deps/include/nlohmann/json.hpp" ]]; then
  echo "run_gpu_tests: .gpu-deps/include/nlohmann/json.hpp missing: run scripts/gpu_deps.sh on the" \
       "development machine and carry .gpu-deps" >&2
  exit 1
fi
NVCC=$(command -v nvcc || true)
[[ -z "$NVCC" && -x /usr/local/cuda/bin/nvcc ]] && NVCC=/usr/local/cuda/bin/nvcc
if [[ -z "$NVCC" ]]; then
  echo "run_gpu_tests: no nvcc found (PATH or /usr/local/cuda/bin)" >&2
  exit 1
fi
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)

echo "== machine"
nvidia-smi -L 2>/dev/null || echo "(nvidia-smi not available)"
"$NVCC" --version | tail -n 2
cmake --version | head -n 1
echo "host compiler: $(c++ --version | head -n 1)"

echo "== build ($BUILD)"
t0=$(date +%s)
mkdir -p "$BUILD"
cmake -S "$ROOT/scripts/gpu_test" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_COMPILER="$NVCC" -DCMAKE_CUDA_ARCHITECTURES=90a "$@" >"$BUILD/configure.log" 2>&1 ||
  { cat "$BUILD/configure.log"; exit 1; }
cmake --build "$BUILD" --parallel "$(nproc)"
echo "build: $(( $(date +%s) - t0 )) s"

echo "== test"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
set +e
timeout 300 "$BUILD/test_cuda_ops" | tee "$BUILD/test_cuda_ops.log"
rc=${PIPESTATUS[0]}
set -e
echo "== summary (max errors and timings)"
grep '^\[cuda-ops\]' "$BUILD/test_cuda_ops.log" || true
grep -E '^\[  FAILED  \]|^\[==========\]' "$BUILD/test_cuda_ops.log" || true
if [[ $rc -eq 0 ]] && grep -q '^\[  SKIPPED \]' "$BUILD/test_cuda_ops.log"; then
  echo "run_gpu_tests: tests were SKIPPED (no usable CUDA device): treating as failure"
  rc=3
fi
echo "run_gpu_tests: exit $rc"
exit "$rc"
