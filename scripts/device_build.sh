#!/usr/bin/env bash
# Step 2 of a GPU-machine build, run THERE (an image with nvcc, CMake, ninja and g++ but none of
# the project's Debian packages, and no network): unpacks .deps/prefix.tar.xz (made here by
# scripts/device_deps.sh, step 1, and carried along) into a private prefix, configures and builds
# the full tree with the top-level CMakeLists.txt (Release, Ninja, sm_90a, all cores), runs
# `ctest -L gpu`, then optionally the whole suite and a command of your own.
#
# Usage: scripts/device_build.sh [--all] [--no-tests] [-- COMMAND ARGS...]
#   --all        also run the whole ctest suite after the GPU tests
#   --no-tests   build only (then COMMAND, e.g. a benchmark)
#   COMMAND      run from the repository root after the tests, with the prefix's libraries found,
#                e.g. `-- build/indexcache bench --device cuda --synthetic glm47flash-dsa --ctx 10K`
# Environment: BUILD_DIR (default build), DEPS_PREFIX (default /tmp/indexcache-deps), CMAKE_ARGS
# (extra configure arguments), GPU_TEST_JOBS (ctest -j for the GPU tests, default 1),
# ALL_TESTS_TIMEOUT (seconds for --all, default 1200), OUT (the device tool's output folder: logs
# and the ctest JUnit XML go there when set).
#
# Exit status: non-zero when the build fails, when any GPU test fails, is skipped (no usable CUDA
# device) or does not run, when there are no GPU tests at all, or when --all or COMMAND fails.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${BUILD_DIR:-$ROOT/build}
PREFIX=${DEPS_PREFIX:-/tmp/indexcache-deps}
LOGS=${OUT:-$BUILD/device-logs}

all=0 tests=1 cmd=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --all) all=1 ;;
    --no-tests) tests=0 ;;
    --) shift; cmd=("$@"); break ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
    *) echo "device_build: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [[ ! -f $ROOT/.deps/prefix.tar.xz ]]; then
  echo "device_build: .deps/prefix.tar.xz missing: run scripts/device_deps.sh on the development" \
       "machine and carry .deps" >&2
  exit 1
fi
NVCC=$(command -v nvcc || true)
[[ -z $NVCC && -x /usr/local/cuda/bin/nvcc ]] && NVCC=/usr/local/cuda/bin/nvcc
if [[ -z $NVCC ]]; then
  echo "device_build: no nvcc found (PATH or /usr/local/cuda/bin)" >&2
  exit 1
fi
mkdir -p "$LOGS" "$BUILD"
step() { echo "== $* ($(date +%T))"; }

step machine
nvidia-smi -L 2>/dev/null || echo "(nvidia-smi not available)"
"$NVCC" --version | tail -n 2
cmake --version | head -n 1
echo "ninja $(ninja --version 2>/dev/null || echo missing); $(c++ --version | head -n 1); $(ldd --version | head -n 1)"
echo "$(nproc) cores; pkg-config: $(command -v pkg-config || echo none)"

step "unpack .deps into $PREFIX"
rm -rf "$PREFIX"
mkdir -p "$PREFIX"
if command -v xz >/dev/null; then
  tar -C "$PREFIX" -xJf "$ROOT/.deps/prefix.tar.xz"
else
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
    "$ROOT/.deps/prefix.tar.xz" "$PREFIX"
fi
MULTIARCH=$(c++ -print-multiarch 2>/dev/null || true)
LIB=$PREFIX/usr/lib/${MULTIARCH:-x86_64-linux-gnu}
# The image's own Fortran runtime, where it has one, rather than Debian's copy.
for so in libgfortran.so.5 libquadmath.so.0; do
  if ldconfig -p 2>/dev/null | grep "$so " >/dev/null; then rm -f "$LIB/$so"*; fi
done
# The linker (libopenblas needs libgfortran) and every program below find the prefix's libraries.
export LD_LIBRARY_PATH=$LIB:$LIB/openblas-openmp${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export CMAKE_POLICY_VERSION_MINIMUM=3.5  # CMake 4 and old packages' config files
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
commit=unknown
[[ -f $ROOT/.deps/commit.txt ]] && commit=$(head -n 1 "$ROOT/.deps/commit.txt")
echo "packages: $(wc -l <"$ROOT/.deps/MANIFEST") ($(du -sh "$PREFIX" | cut -f1) unpacked); commit $commit"

step "configure ($BUILD)"
t0=$(date +%s)
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
# shellcheck disable=SC2086
if ! cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$PREFIX/usr" -DCMAKE_CUDA_COMPILER="$NVCC" -DCMAKE_CUDA_ARCHITECTURES=90a \
    -DINDEXCACHE_GIT_COMMIT="$commit" ${CMAKE_ARGS:-} >"$LOGS/configure.log" 2>&1; then
  tail -n 60 "$LOGS/configure.log"
  echo "device_build: configure failed (log: $LOGS/configure.log)"
  exit 1
fi
grep -E "^-- (BLAS|PCRE2|CUDA backend|Found (GTest|benchmark|fmt|CLI11|nlohmann|OpenMP_CXX))" \
  "$LOGS/configure.log" || true
t1=$(date +%s)
echo "configure: $((t1 - t0)) s"

step build
set +e
cmake --build "$BUILD" --parallel "$(nproc)" >"$LOGS/build.log" 2>&1
rc=$?
set -e
t2=$(date +%s)
if [[ $rc -ne 0 ]]; then
  grep -E -B2 -A12 "error|FAILED" "$LOGS/build.log" | head -n 150
  echo "device_build: build failed (log: $LOGS/build.log)"
  exit 1
fi
tail -n 1 "$LOGS/build.log"
echo "build: $((t2 - t1)) s"

status=0
if [[ $tests -eq 1 ]]; then
  step "ctest -L gpu"
  set +e
  ctest --test-dir "$BUILD" -L gpu --output-on-failure -j"${GPU_TEST_JOBS:-1}" \
    --output-junit "$LOGS/ctest_gpu.xml" >"$LOGS/ctest_gpu.log" 2>&1
  rc=$?
  set -e
  grep -E "tests passed|Total Test time" "$LOGS/ctest_gpu.log" || true
  # Fails, skips (a GTEST_SKIP: no usable device) and tests that did not run all count as failure.
  python3 - "$LOGS/ctest_gpu.xml" <<'EOF' || status=1
import sys, xml.etree.ElementTree as ET
try:
    cases = ET.parse(sys.argv[1]).getroot().iter("testcase")
except (OSError, ET.ParseError) as e:
    print(f"gpu tests: no JUnit report ({e})"); sys.exit(1)
ok, bad = 0, []
for c in cases:
    out = "".join(c.itertext())
    st = c.get("status", "")
    if c.find("skipped") is not None or "[  SKIPPED ]" in out or st in ("notrun", "disabled"):
        bad.append(("skipped", c.get("name")))
    elif c.find("failure") is not None or st == "fail":
        bad.append(("failed", c.get("name")))
    else:
        ok += 1
for kind, name in bad:
    print(f"  {kind}: {name}")
print(f"gpu tests: {ok} passed, {sum(k == 'failed' for k, _ in bad)} failed, "
      f"{sum(k == 'skipped' for k, _ in bad)} skipped or not run")
sys.exit(0 if ok and not bad else 1)
EOF
  [[ $rc -ne 0 ]] && status=1
  echo "gpu tests: ctest exit $rc (log: $LOGS/ctest_gpu.log)"
  if [[ $all -eq 1 ]]; then
    step "ctest (all)"
    set +e
    # Two OpenMP threads per test, half the cores' worth of tests: no oversubscribed thread pools.
    OMP_NUM_THREADS=2 timeout "${ALL_TESTS_TIMEOUT:-1200}" ctest --test-dir "$BUILD" \
      --output-on-failure -j"$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))" >"$LOGS/ctest_all.log" 2>&1
    rc=$?
    set -e
    grep -E "tests passed|Total Test time|\(Failed\)|\(Timeout\)|Not Run" "$LOGS/ctest_all.log" || true
    [[ $rc -ne 0 ]] && status=1
    echo "all tests: ctest exit $rc (log: $LOGS/ctest_all.log)"
  fi
fi

if [[ ${#cmd[@]} -gt 0 ]]; then
  step "${cmd[*]}"
  set +e
  "${cmd[@]}" 2>&1 | tee "$LOGS/command.log"
  rc=${PIPESTATUS[0]}
  set -e
  [[ $rc -ne 0 ]] && status=1
  echo "command: exit $rc"
fi
echo "device_build: exit $status (configure $((t1 - t0)) s, build $((t2 - t1)) s; logs in $LOGS)"
exit "$status"
