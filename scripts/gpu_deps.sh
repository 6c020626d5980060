#!/usr/bin/env bash
# Fills .gpu-deps/ (git-ignored) for the self-contained GPU builds (scripts/gpu_bench): the
# header-only nlohmann/json of this machine (the GPU image has none) and the commit the tree is
# at (the GPU machine's copy of the tree may have no .git). Run it here, on the development
# machine, before a GPU run; then carry `.gpu-deps` to the device with the tree.
#
# Usage: scripts/gpu_deps.sh        (NLOHMANN_INCLUDE=/path/to/nlohmann to copy another one)
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${NLOHMANN_INCLUDE:-/usr/include/nlohmann}
if [[ ! -f "$SRC/json.hpp" ]]; then
  echo "gpu_deps: $SRC/json.hpp not found (Debian: apt-get install nlohmann-json3-dev)" >&2
  exit 1
fi
rm -rf .gpu-deps/include
mkdir -p .gpu-deps/include
cp -rL "$SRC" .gpu-deps/include/nlohmann
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [[ $commit != unknown && -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
  commit="$commit-dirty"
fi
echo "$commit" >.gpu-deps/commit.txt
echo "gpu_deps: .gpu-deps/include/nlohmann ($(du -sh .gpu-deps | cut -f1)), commit $commit"
