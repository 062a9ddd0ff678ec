// SPDX-License-Identifier: MIT
// Throughput of torch-compatible noise (diffuse/core/random.hpp): randn of SD latents, and its
// parts (MT19937 uniforms; the Box–Muller block on each path the CPU has). items/s = samples/s.
#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/random_impl.hpp"
#include "diffuse/core/cpu.hpp"
#include "diffuse/core/random.hpp"

namespace {

void randn_latent(benchmark::State& state, std::size_t h, std::size_t w) {
  diffuse::TorchGenerator gen(0);
  std::vector<float> out(4 * h * w);
  for (auto _ : state) {
    diffuse::randn(gen, out);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(out.size()));
  state.SetLabel(std::string(diffuse::randn_isa()));
}
BENCHMARK_CAPTURE(randn_latent, 1x4x64x64, 64, 64);
BENCHMARK_CAPTURE(randn_latent, 1x4x128x128, 128, 128);

void randn_f16_latent(benchmark::State& state) {
  diffuse::TorchGenerator gen(0);
  std::vector<std::uint16_t> out(4 * 64 * 64);
  for (auto _ : state) {
    diffuse::randn_f16(gen, out);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(out.size()));
}
BENCHMARK(randn_f16_latent);

void uniforms(benchmark::State& state) {
  diffuse::TorchGenerator gen(0);
  std::vector<float> out(4 * 64 * 64);
  for (auto _ : state) {
    gen.fill_uniform_float(out.data(), out.size());
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(out.size()));
}
BENCHMARK(uniforms);

void box_muller(benchmark::State& state, void (*kernel)(float*, std::size_t), bool needs_avx2) {
  if (needs_avx2 && diffuse::isa_level() < diffuse::IsaLevel::avx2) {
    state.SkipWithError("no AVX2");
    return;
  }
  diffuse::TorchGenerator gen(0);
  std::vector<float> uniform(4 * 64 * 64), work(uniform.size());
  gen.fill_uniform_float(uniform.data(), uniform.size());
  for (auto _ : state) {
    work = uniform;
    kernel(work.data(), work.size() / 16);
    benchmark::DoNotOptimize(work.data());
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(work.size()));
}
BENCHMARK_CAPTURE(box_muller, scalar, diffuse::kernels::scalar::torch_box_muller_16, false);
#if DIFFUSE_RANDOM_X86
BENCHMARK_CAPTURE(box_muller, avx2, diffuse::kernels::avx2::torch_box_muller_16, true);
#endif

void philox_latent(benchmark::State& state) {
  diffuse::PhiloxGenerator gen(0);
  std::vector<float> out(4 * 64 * 64);
  for (auto _ : state) {
    gen.randn(out);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(out.size()));
}
BENCHMARK(philox_latent);

}  // namespace
