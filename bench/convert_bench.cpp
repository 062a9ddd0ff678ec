// SPDX-License-Identifier: MIT
// Throughput of the f16/bf16 <-> f32 conversions, one benchmark per direction, instruction-set
// path and size: "<op>/<path>/<f32 bytes>". bytes_processed counts both sides (read + write), so
// the GB/s column is memory traffic; items_processed is elements.
#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/convert_impl.hpp"

namespace {

using diffuse::kernels::ConvertKernels;
using diffuse::kernels::ConvertPath;

enum class Op { f16_to_f32, bf16_to_f32, f32_to_f16, f32_to_bf16 };

void run(benchmark::State& state, const ConvertKernels* k, Op op) {
  const auto n = static_cast<std::size_t>(state.range(0)) / sizeof(float);
  std::vector<float> f(n);
  std::vector<std::uint16_t> h(n);
  std::uint32_t x = 12345;
  for (std::size_t i = 0; i < n; ++i) {  // values across the f16 range, and 16-bit codes from an LCG
    x = x * 1664525u + 1013904223u;
    f[i] = static_cast<float>(static_cast<std::int32_t>(x)) * 1e-5f;
    h[i] = static_cast<std::uint16_t>(x >> 16);
  }
  for (auto _ : state) {
    switch (op) {
      case Op::f16_to_f32: k->f16_to_f32(h.data(), f.data(), n); break;
      case Op::bf16_to_f32: k->bf16_to_f32(h.data(), f.data(), n); break;
      case Op::f32_to_f16: k->f32_to_f16(f.data(), h.data(), n); break;
      case Op::f32_to_bf16: k->f32_to_bf16(f.data(), h.data(), n); break;
    }
    benchmark::DoNotOptimize(f.data());
    benchmark::DoNotOptimize(h.data());
    benchmark::ClobberMemory();
  }
  const auto items = static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(n);
  state.SetItemsProcessed(items);
  state.SetBytesProcessed(items * static_cast<std::int64_t>(sizeof(float) + sizeof(std::uint16_t)));
}

bool register_all() {
  const struct {
    const char* name;
    Op op;
  } ops[] = {{"f16_to_f32", Op::f16_to_f32},
             {"bf16_to_f32", Op::bf16_to_f32},
             {"f32_to_f16", Op::f32_to_f16},
             {"f32_to_bf16", Op::f32_to_bf16}};
  for (const auto& o : ops) {
    for (ConvertPath p : {ConvertPath::scalar, ConvertPath::f16c, ConvertPath::avx512}) {
      if (!diffuse::kernels::convert_path_supported(p)) continue;
      const ConvertKernels* k = &diffuse::kernels::convert_kernels(p);
      benchmark::RegisterBenchmark((std::string(o.name) + "/" + k->name).c_str(), run, k, o.op)
          ->RangeMultiplier(8)
          ->Range(4 << 10, 64 << 20);  // f32 bytes: 4 KiB, 32 KiB, 256 KiB, 2 MiB, 16 MiB, 64 MiB
    }
  }
  return true;
}

const bool kRegistered = register_all();

}  // namespace
