#!/usr/bin/env bash
# One command for the GPU machine: builds the self-contained bench (scripts/gpu_bench, Release,
# sm_90) in build-gpu-bench and runs `indexcache bench --device cuda` with the given arguments,
# printing the markdown report; the JSON goes to $OUT/bench.json when $OUT is set (the device
# tool's output folder), else to the build folder.
#
# Needs .gpu-deps/ (nlohmann/json + commit), made by scripts/gpu_deps.sh on the development machine
# and carried along with the tree.
#
# Usage (from anywhere): scripts/run_gpu_bench.sh [bench args...]
#   no args: the paper's matrix on its 30B-class model:
#   --synthetic glm47flash-dsa --ctx 10K,60K,120K --plan full,1/2,1/4 --mode prefill,decode
# Environment: BUILD_DIR, CMAKE_ARGS (extra configure arguments), BENCH_TIMEOUT (seconds, 540).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${BUILD_DIR:-$ROOT/build-gpu-bench}

if [[ ! -f "$ROOT/.gpu-deps/include/nlohmann/json.hpp" ]]; then
  echo "run_gpu_bench: .gpu-deps/include/nlohmann/json.hpp missing: run scripts/gpu_deps.sh on the" \
       "development machine and carry .gpu-deps" >&2
  exit 1
fi
NVCC=$(command -v nvcc || true)
[[ -z "$NVCC" && -x /usr/local/cuda/bin/nvcc ]] && NVCC=/usr/local/cuda/bin/nvcc
if [[ -z "$NVCC" ]]; then
  echo "run_gpu_bench: no nvcc found (PATH or /usr/local/cuda/bin)" >&2
  exit 1
fi
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)

echo "== machine"
nvidia-smi -L 2>/dev/null || echo "(nvidia-smi not available)"
nvidia-smi --query-gpu=driver_version,clocks.max.sm,power.limit --format=csv,noheader 2>/dev/null || true
"$NVCC" --version | tail -n 2

echo "== build ($BUILD)"
t0=$(date +%s)
mkdir -p "$BUILD"
# shellcheck disable=SC2086
cmake -S "$ROOT/scripts/gpu_bench" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_COMPILER="$NVCC" -DCMAKE_CUDA_ARCHITECTURES=90a ${CMAKE_ARGS:-} >"$BUILD/configure.log" 2>&1 ||
  { cat "$BUILD/configure.log"; exit 1; }
cmake --build "$BUILD" --parallel "$(nproc)"
echo "build: $(( $(date +%s) - t0 )) s"

ARGS=("$@")
if [[ ${#ARGS[@]} -eq 0 ]]; then
  ARGS=(--synthetic glm47flash-dsa --ctx "10K,60K,120K" --plan "full,1/2,1/4" --mode "prefill,decode")
fi
JSON=${OUT:-$BUILD}/bench.json
echo "== bench: indexcache bench --device cuda ${ARGS[*]}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
set +e
timeout "${BENCH_TIMEOUT:-540}" "$BUILD/indexcache_bench" --device cuda "${ARGS[@]}" --json-out "$JSON" |
  tee "$BUILD/bench.md"
rc=${PIPESTATUS[0]}
set -e
[[ -f "$JSON" ]] && echo "json: $JSON"
echo "run_gpu_bench: exit $rc"
exit "$rc"
