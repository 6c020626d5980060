#!/usr/bin/env bash
# Step 1 of a GPU-machine build, run HERE (Debian 12, root, apt works): packs the Debian packages
# the full tree builds against into .deps/ (git-ignored), for a machine whose image has nvcc,
# CMake, ninja and g++ but none of them and no network. Carry `.deps` to that machine with the
# tree, then run scripts/device_build.sh there (step 2).
#
# .deps/prefix.tar.xz  the packages' files (`dpkg -x`), without docs, static OpenBLAS, LAPACK and
#                      the 16/32-bit PCRE2; .pc files made relocatable (prefix from ${pcfiledir}).
#                      The .debs themselves are about 15 MB, over what a device call carries well;
#                      this is about 7 MB.
# .deps/MANIFEST       package=version, one a line
# .deps/commit.txt     the commit the tree is at (+ -dirty), which bench reports name; the device's
#                      copy of the tree may have no .git
#
# Usage: scripts/device_deps.sh          (re-downloads only when the package list or versions change)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEPS=$ROOT/.deps

# The -dev packages of .ci/install-deps, plus the runtime libraries they link that the device image
# may lack. libgomp1, libstdc++6 and glibc come with the image's g++.
PACKAGES=(
  nlohmann-json3-dev libcli11-dev
  libfmt-dev libfmt9
  libopenblas-openmp-dev libopenblas0-openmp libgfortran5 libquadmath0
  libgtest-dev libgmock-dev
  libbenchmark-dev libbenchmark1debian
  libhwy-dev libhwy1
  libpcre2-dev libpcre2-8-0
  libcpp-httplib-dev libcpp-httplib0.11
)

arch=$(dpkg --print-architecture)
mkdir -p "$DEPS"
manifest=$(apt-cache policy "${PACKAGES[@]}" | awk '/^[^ ]/{p=$1} /Candidate:/{sub(":$","",p); print p"="$2}')
if [[ $(wc -l <<<"$manifest") -ne ${#PACKAGES[@]} ]] || grep -q '=(none)' <<<"$manifest"; then
  apt-get update -qq
  manifest=$(apt-cache policy "${PACKAGES[@]}" | awk '/^[^ ]/{p=$1} /Candidate:/{sub(":$","",p); print p"="$2}')
fi
if grep -q '=(none)' <<<"$manifest"; then
  echo "device_deps: no candidate for: $(grep '=(none)' <<<"$manifest" | cut -d= -f1 | xargs)" >&2
  exit 1
fi

if [[ -f $DEPS/prefix.tar.xz && -f $DEPS/MANIFEST && "$(cat "$DEPS/MANIFEST")" == "$manifest" ]]; then
  echo "device_deps: .deps/prefix.tar.xz is up to date"
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/debs" "$work/root"
  chmod 755 "$work"
  # apt-get download writes into the current folder, as the _apt user where it can.
  chmod 777 "$work/debs"
  (cd "$work/debs" && apt-get download -q $manifest >/dev/null)
  for f in "$work"/debs/*.deb; do dpkg -x "$f" "$work/root"; done
  lib=$work/root/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -dumpmachine)
  rm -rf "$work/root/usr/share/doc" "$work/root/usr/share/man" "$work/root/usr/share/lintian" \
    "$work/root/usr/bin" "$work/root/usr/src"
  rm -f "$lib"/openblas-openmp/*.a "$lib"/openblas-openmp/libblas.* "$lib"/openblas-openmp/liblapack.* \
    "$lib"/openblas-openmp/pkgconfig/blas-openblas.pc "$lib"/openblas-openmp/pkgconfig/lapack-openblas.pc \
    "$lib"/openblas-openmp/cmake/openblas/* \
    "$lib"/libpcre2-16* "$lib"/libpcre2-32* "$lib"/libpcre2-posix* \
    "$lib"/pkgconfig/libpcre2-16.pc "$lib"/pkgconfig/libpcre2-32.pc "$lib"/pkgconfig/libpcre2-posix.pc
  # pkg-config files name /usr; make each relative to its own folder, so the prefix can lie anywhere.
  find "$work/root" -name '*.pc' -print0 | while IFS= read -r -d '' pc; do
    rel=$(realpath --relative-to="$(dirname "$pc")" "$work/root/usr")
    sed -i -E "s#^([a-z_]+)=/usr(/|\$)#\1=\\\${pcfiledir}/$rel\2#" "$pc"
  done
  # Dangling links (to packages not carried) would only confuse find_library.
  find "$work/root" -xtype l -delete
  find "$work/root" -type d -empty -delete
  tar -C "$work/root" -cJf "$DEPS/prefix.tar.xz.tmp" usr
  mv "$DEPS/prefix.tar.xz.tmp" "$DEPS/prefix.tar.xz"
  echo "$manifest" >"$DEPS/MANIFEST"
fi

commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [[ $commit != unknown && -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
  commit="$commit-dirty"
fi
echo "$commit" >"$DEPS/commit.txt"
echo "device_deps: .deps ($(du -sh "$DEPS" | cut -f1), $arch, ${#PACKAGES[@]} packages), commit $commit"
echo "device_deps: now carry \".deps\" and run scripts/device_build.sh on the GPU machine"
