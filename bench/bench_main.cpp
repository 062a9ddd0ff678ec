// SPDX-License-Identifier: MIT
// Shared main of the benchmarks: numbers are only comparable when the report says which
// instruction set, thread count and flags produced them.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <thread>

#include "diffuse/core/convert.hpp"
#include "diffuse/core/cpu.hpp"

int main(int argc, char** argv) {
  std::printf("diffuse %d.%d.%d | dispatched ISA: %s | conversions: %s | hardware threads: %u\n",
              DIFFUSE_VERSION_MAJOR, DIFFUSE_VERSION_MINOR, DIFFUSE_VERSION_PATCH,
              diffuse::isa_name(diffuse::isa_level()).data(), diffuse::convert_isa().data(),
              std::thread::hardware_concurrency());
  std::printf("build flags: %s %s\n", DIFFUSE_BUILD_FLAGS, DIFFUSE_MARCH_FLAG);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
