#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The main job: installs what is missing, builds diffuse and its examples (Release, host SIMD), and
# generates an image into out/. Arguments are passed to the generator, e.g.
#   scripts/generate.sh --sampler euler_a --seed 7 --steps 30
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

build=${BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDIFFUSE_BUILD_EXAMPLES=ON >/dev/null
cmake --build "$build" -j "$(nproc)" --target diffuse_custom_denoiser
mkdir -p out
"$build/examples/diffuse_custom_denoiser" -o out/diffuse.png "$@"
