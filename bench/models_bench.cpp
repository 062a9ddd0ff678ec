// SPDX-License-Identifier: MIT
// Whole-network forward timings of the reference networks, on the weights tools/compare_torch.py times
// PyTorch eager on (the recipes of tests/data/models, materialised once into the temp dir, and the shipped
// models/). Each benchmark reports ms per forward (the whole batch) and the activation arena's peak.
// Names follow tools/compare_torch.py: <name>/batch:<B>/threads:<T>, real (wall-clock) time.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "../tests/models/model_fixture.hpp"
#include "diffuse/core/dtype.hpp"
#include "diffuse/kernels/parallel.hpp"
#include "diffuse/models/network.hpp"

namespace {

namespace fs = std::filesystem;

fs::path source_dir() { return fs::path(__FILE__).parent_path().parent_path(); }
fs::path fixtures_dir() { return source_dir() / "tests" / "data" / "models"; }

/// Runs `net` on a fixed input of the given shape as compare_torch.py builds it (timesteps 999 - 37.5 i,
/// labels i % num_classes when conditional), reporting ms/forward and the arena peak.
void run_network(benchmark::State& state, const diffuse::models::Network& net, std::size_t size) {
  const auto batch = static_cast<std::size_t>(state.range(0));
  const auto threads = static_cast<std::size_t>(state.range(1));
  const auto& info = net.info();
  diffuse::Tensor x({batch, info.in_channels, size, size});
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.731f * static_cast<float>(i));
  std::vector<float> t(batch);
  std::vector<std::int64_t> y;
  for (std::size_t i = 0; i < batch; ++i) {
    t[i] = 999.0f - 37.5f * static_cast<float>(i);
    if (info.num_classes) y.push_back(static_cast<std::int64_t>(i % info.num_classes));
  }
  diffuse::kernels::Context ctx(threads);
  benchmark::DoNotOptimize(net.forward(x, t, y, ctx));  // plans the arena
  double seconds = 0;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(net.forward(x, t, y, ctx));
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  state.counters["ms"] = 1e3 * seconds / static_cast<double>(state.iterations());
  state.counters["arena_MB"] = static_cast<double>(ctx.arena().peak_bytes()) / (1024.0 * 1024.0);
}

// ---------------------------------------------------------------------------------------------
// UNet2DModel

const diffuse::models::Network& unet_cifar10() {
  static const std::unique_ptr<diffuse::models::Network> net = [] {
    const fs::path dir = diffuse_test::materialize_recipe(fixtures_dir() / "ddpm_cifar10_recipe",
                                                          fs::temp_directory_path() / "diffuse_ddpm_cifar10_recipe");
    return diffuse::models::load_network(dir);
  }();
  return *net;
}

const diffuse::models::Network& unet_digits() {
  static const std::unique_ptr<diffuse::models::Network> net =
      diffuse::models::load_network(source_dir() / "models" / "digits-unet");
  return *net;
}

/// google/ddpm-cifar10-32 (35.7M parameters, recipe weights), 32x32.
void BM_unet2d_cifar10(benchmark::State& state) { run_network(state, unet_cifar10(), 32); }
BENCHMARK(BM_unet2d_cifar10)
    ->ArgNames({"batch", "threads"})
    ->ArgsProduct({{1, 2}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

/// The shipped digits-unet, 16x16, batch 2 (one CFG step: conditional + null class).
void BM_digits_unet(benchmark::State& state) { run_network(state, unet_digits(), 16); }
BENCHMARK(BM_digits_unet)
    ->ArgNames({"batch", "threads"})
    ->ArgsProduct({{2}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// ---------------------------------------------------------------------------------------------
// DiTTransformer2DModel (the DiT engineer's block)

/// A recipe (tests/data/models/<recipe>), materialised once, loaded with GEMM weights as
/// `matrix_dtype` (F32 or BF16: the recipe file is f32).
const diffuse::models::Network& dit_recipe(const char* recipe, diffuse::DType matrix_dtype) {
  static std::map<std::pair<std::string, diffuse::DType>, std::unique_ptr<diffuse::models::Network>> nets;
  auto& net = nets[{recipe, matrix_dtype}];
  if (!net) {
    const fs::path dir = diffuse_test::materialize_recipe(fixtures_dir() / recipe,
                                                          fs::temp_directory_path() / ("diffuse_" + std::string(recipe)));
    diffuse::nn::LoadOptions options;
    options.matrix_dtype = matrix_dtype;
    net = diffuse::models::load_network(dir, options);
  }
  return *net;
}

const diffuse::models::Network& dit_digits() {
  static const std::unique_ptr<diffuse::models::Network> net =
      diffuse::models::load_network(source_dir() / "models" / "digits-dit");
  return *net;
}

/// DiT-S/2 (hidden 384, 12 layers, 6 heads, patch 2, learned sigma; recipe weights), 32x32x4 latents.
void BM_dit_s2(benchmark::State& state) { run_network(state, dit_recipe("dit_s2_recipe", diffuse::DType::F32), 32); }
BENCHMARK(BM_dit_s2)
    ->ArgNames({"batch", "threads"})
    ->ArgsProduct({{1, 2}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

/// DiT-S/2 with the GEMM weights converted to bf16 at load.
void BM_dit_s2_bf16(benchmark::State& state) {
  run_network(state, dit_recipe("dit_s2_recipe", diffuse::DType::BF16), 32);
}
BENCHMARK(BM_dit_s2_bf16)
    ->ArgNames({"batch", "threads"})
    ->ArgsProduct({{1}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

/// DiT-B/2 (hidden 768, 12 layers, 12 heads, patch 2, learned sigma; recipe weights), 32x32x4 latents.
void BM_dit_b2(benchmark::State& state) { run_network(state, dit_recipe("dit_b2_recipe", diffuse::DType::F32), 32); }
BENCHMARK(BM_dit_b2)
    ->ArgNames({"batch", "threads"})
    ->ArgsProduct({{1, 2}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

/// DiT-B/2 with the GEMM weights converted to bf16 at load.
void BM_dit_b2_bf16(benchmark::State& state) {
  run_network(state, dit_recipe("dit_b2_recipe", diffuse::DType::BF16), 32);
}
BENCHMARK(BM_dit_b2_bf16)
    ->ArgNames({"batch", "threads"})
    ->ArgsProduct({{1}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

/// The shipped digits-dit (f16 weights used in place), 16x16, batch 2 (one CFG step).
void BM_digits_dit(benchmark::State& state) { run_network(state, dit_digits(), 16); }
BENCHMARK(BM_digits_dit)
    ->ArgNames({"batch", "threads"})
    ->ArgsProduct({{2}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
