#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs, from Debian's packages, whichever of diffuse's build dependencies are missing.
# Extra package names given as arguments are installed too (scripts/fuzz.sh passes clang; .ci/run passes
# SDL2 and Xvfb for examples/live_preview).
set -euo pipefail

pkgs=(cmake ninja-build g++ pkg-config
      libeigen3-dev xtensor-dev libxsimd-dev nlohmann-json3-dev libstb-dev
      googletest libgtest-dev libbenchmark-dev libcli11-dev "$@")

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "install-deps: installing ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
