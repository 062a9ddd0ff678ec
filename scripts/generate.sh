#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The main job: installs what is missing, builds diffuse and its `diffuse` program (Release, host
# SIMD), and generates from text with the shipped emoji model (models/emoji, a Stable Diffusion
# pipeline in small) into out/diffuse.png. With no prompt it draws a 4x4 grid of 16 subjects; arguments
# are passed to `diffuse generate` and override the defaults here, e.g.
#   scripts/generate.sh -p "rocket"
#   scripts/generate.sh -p "red apple" -p "cat face" --seed 3 --steps 30
#   scripts/generate.sh --model models/digits-dit --class all --batch 20 --grid
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

build=${BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDIFFUSE_BUILD_CLI=ON >/dev/null
cmake --build "$build" -j "$(nproc)" --target diffuse_cli

has_model=0
has_prompt=0
for a in "$@"; do
  case "$a" in
    --model | --model=*) has_model=1 ;;
    -p | --prompt | --prompt=* | -p?*) has_prompt=1 ;;
  esac
done
defaults=()
if [ "$has_model" -eq 0 ]; then
  defaults+=(--model models/emoji --grid)
  if [ "$has_prompt" -eq 0 ]; then
    for p in "red apple" "rocket" "cat face" "smiling face with sunglasses" "pizza" "sun" "ghost" "tree" \
             "grinning face" "dog face" "red heart" "flag: japan" "keycap: 1" "play button" "aries" "snowman"; do
      defaults+=(-p "$p")
    done
    defaults+=(--grid-columns 4)
  fi
fi
mkdir -p out
"$build/cli/diffuse" generate "${defaults[@]}" -o out/diffuse.png "$@"
