// SPDX-License-Identifier: MIT
// Prints the instruction-set level the kernels dispatch to ("scalar", "avx2" or "avx512"): the
// highest the CPU has, capped by DIFFUSE_ISA. .ci/run runs the kernel tests under each level and
// uses this to tell a level the CPU lacks (reported as skipped) from one that really runs.
#include <cstdio>

#include "diffuse/core/cpu.hpp"

int main() {
  std::printf("%s\n", diffuse::isa_name(diffuse::isa_level()).data());
  return 0;
}
