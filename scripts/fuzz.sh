#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds the libFuzzer targets with clang (ASan + UBSan) in build-fuzz and runs the safetensors
# fuzzer for SECONDS (default 60), seeded from the committed corpus. Fails on any crash, leak,
# sanitizer report or timeout; the offending input is left in build-fuzz/artifacts/.
# JOBS (default 2) sets the build parallelism.
# Usage: scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
scripts/install-deps.sh clang libclang-rt-14-dev

build=build-fuzz
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang \
      -DDIFFUSE_BUILD_FUZZERS=ON -DDIFFUSE_BUILD_TESTS=OFF -DDIFFUSE_BUILD_EXAMPLES=OFF \
      -DDIFFUSE_BUILD_BENCHMARKS=OFF -DDIFFUSE_INSTALL=OFF >/dev/null
cmake --build "$build" --target safetensors_fuzz -j "${JOBS:-2}"

# New inputs go to the first (git-ignored) directory; the committed files are read-only seeds.
corpus=fuzz-corpus-safetensors
mkdir -p "$corpus" "$build/artifacts"
seeds=tests/data/safetensors
echo "fuzz: running safetensors_fuzz for ${seconds}s" >&2
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
"$build/tests/fuzz/safetensors_fuzz" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
  -max_len=65536 -dict=tests/fuzz/safetensors.dict -artifact_prefix="$build/artifacts/" \
  -print_final_stats=1 "$corpus" "$seeds/malformed" "$seeds/valid" "$seeds"
