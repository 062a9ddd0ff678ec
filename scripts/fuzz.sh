#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds the libFuzzer targets with clang (ASan + UBSan) in build-fuzz and runs every one of them,
# each for an equal share of SECONDS (default 60, at least 10 s each). Fails on any crash, leak,
# sanitizer report or timeout, after running the others; the offending input is left in
# build-fuzz/artifacts/<target>-crash-... JOBS (default 2) sets the build parallelism.
#
# Convention, so that a new fuzzer needs no change here or in .ci/run: every executable that
# tests/fuzz/CMakeLists.txt builds is a fuzz target (named <name>_fuzz, from <name>_fuzz.cpp).
# Optional, next to it: tests/fuzz/<name>.dict (a libFuzzer dictionary) and tests/fuzz/<name>.seeds
# (seed directories, one per line, relative to the repository; read-only). New inputs go to the
# git-ignored fuzz-corpus-<name>/.
# Usage: scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
scripts/install-deps.sh clang libclang-rt-14-dev

build=build-fuzz
launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
fi
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang "${launcher[@]}" \
      -DDIFFUSE_BUILD_FUZZERS=ON -DDIFFUSE_BUILD_TESTS=OFF -DDIFFUSE_BUILD_EXAMPLES=OFF \
      -DDIFFUSE_BUILD_CLI=OFF -DDIFFUSE_BUILD_BENCHMARKS=OFF -DDIFFUSE_INSTALL=OFF >/dev/null
# With tests, examples, the CLI and benchmarks off, "all" is the library and the fuzz targets.
cmake --build "$build" -j "${JOBS:-2}"

mapfile -t targets < <(find "$build/tests/fuzz" -path '*/CMakeFiles' -prune -o -type f -executable -print | sort)
if [ ${#targets[@]} -eq 0 ]; then
  echo "fuzz: no fuzz targets built in $build/tests/fuzz" >&2
  exit 1
fi
share=$(( seconds / ${#targets[@]} ))
[ "$share" -lt 10 ] && share=10
mkdir -p "$build/artifacts"
failed=()
for exe in "${targets[@]}"; do
  target=$(basename "$exe")
  name=${target%_fuzz}
  args=(-max_total_time="$share" -timeout=10 -rss_limit_mb=2048 -max_len=65536
        -artifact_prefix="$build/artifacts/$target-" -print_final_stats=1)
  [ -f "tests/fuzz/$name.dict" ] && args+=(-dict="tests/fuzz/$name.dict")
  corpus=fuzz-corpus-$name
  mkdir -p "$corpus"
  dirs=("$corpus")
  if [ -f "tests/fuzz/$name.seeds" ]; then
    while read -r dir; do
      [ -n "$dir" ] && [ "${dir#\#}" = "$dir" ] && dirs+=("$dir")
    done < "tests/fuzz/$name.seeds"
  fi
  echo "fuzz: running $target for ${share}s (seeds: ${dirs[*]})" >&2
  if ! UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 "$exe" "${args[@]}" "${dirs[@]}"; then
    failed+=("$target")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} (inputs in $build/artifacts/)" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} target(s) ran ${share}s each without a finding: $(basename -a "${targets[@]}" | tr '\n' ' ')" >&2
