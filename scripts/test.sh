#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The whole test suite: installs what is missing, builds diffuse (Release, host SIMD) with its tests,
# and runs them with CTest, including the CMake consumption test. Warnings are reported but do not
# stop the build: a compiler may warn on a CPU nobody tested; CI (.ci/run) builds with -Werror.
# BUILD_DIR (default build) and extra CMake arguments in DIFFUSE_CMAKE_ARGS may be set (they come
# last, so -DDIFFUSE_WERROR=ON turns warnings into errors); BUILD_TARGETS (default: all) builds only
# the named targets, for a slow sanitizer build of a few tests; BUILD_ONLY=1 stops before CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

build=${BUILD_DIR:-build}
jobs=$(nproc)
# shellcheck disable=SC2086
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDIFFUSE_BUILD_TESTS=ON \
      -DDIFFUSE_BUILD_EXAMPLES=ON -DDIFFUSE_WERROR=OFF ${DIFFUSE_CMAKE_ARGS:-}
# shellcheck disable=SC2086
cmake --build "$build" -j "$jobs" ${BUILD_TARGETS:+--target $BUILD_TARGETS}
[ "${BUILD_ONLY:-0}" = 1 ] && exit 0
ctest --test-dir "$build" --output-on-failure -j "$jobs" ${CTEST_ARGS:-}
