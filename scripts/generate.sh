#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The main job: installs what is missing, builds diffuse and its `diffuse` program (Release, host
# SIMD), and generates two of each digit 0-9 with the shipped class-conditional DiT into
# out/diffuse.png. Arguments are passed to `diffuse generate` and override the defaults here, e.g.
#   scripts/generate.sh --class 7 --batch 8 --seed 3
#   scripts/generate.sh --model models/digits-unet --sampler euler_a --steps 30
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

build=${BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDIFFUSE_BUILD_CLI=ON >/dev/null
cmake --build "$build" -j "$(nproc)" --target diffuse_cli
mkdir -p out
"$build/cli/diffuse" generate --model models/digits-dit --class all --batch 20 --grid -o out/diffuse.png "$@"
