#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The whole test suite: installs what is missing, builds diffuse (Release, host SIMD, warnings as
# errors) with its tests, and runs them with CTest, including the CMake consumption test.
# BUILD_DIR (default build) and extra CMake arguments in DIFFUSE_CMAKE_ARGS may be set.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

build=${BUILD_DIR:-build}
jobs=$(nproc)
# shellcheck disable=SC2086
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDIFFUSE_BUILD_TESTS=ON \
      -DDIFFUSE_BUILD_EXAMPLES=ON -DDIFFUSE_WERROR=ON ${DIFFUSE_CMAKE_ARGS:-}
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs" ${CTEST_ARGS:-}
