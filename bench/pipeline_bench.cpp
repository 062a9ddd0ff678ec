// SPDX-License-Identifier: MIT
// End-to-end generation throughput of the shipped models: one whole pipeline::generate (model
// loaded once; options resolved, schedule built, noise drawn, 20 steps of the model's default
// sampler and schedule, classifier-free guidance at the default scale) per iteration, batch 1. With
// CFG each step is one forward of 2 rows ([uncond; cond]). Counter images_per_s; real time.
// The emoji model runs at its defaults exactly (`diffuse generate -p "red apple"`: 25 steps, the prompt
// and the empty prompt encoded, VAE decode), and BM_emoji_cold is the time to a first image from
// nothing: load the folder (map, validate, bind), encode, 25 steps, decode.
// Names: <model>/threads:<T>.
#include <benchmark/benchmark.h>

#include <chrono>
#include <filesystem>

#include "diffuse/kernels/parallel.hpp"
#include "diffuse/pipeline/pipeline.hpp"

namespace {

namespace fs = std::filesystem;
namespace pl = diffuse::pipeline;

constexpr int kSteps = 20;

fs::path models_dir() { return fs::path(__FILE__).parent_path().parent_path() / "models"; }

void run_generation(benchmark::State& state, const pl::Model& model, bool text = false) {
  const auto threads = static_cast<std::size_t>(state.range(0));
  pl::GenerateOptions o;  // the model's default sampler, schedule and guidance
  if (text) {
    o.prompts = {"red apple"};  // and the default steps
  } else {
    o.steps = kSteps;
    o.labels = {3};
  }
  o.seed = 1;
  diffuse::kernels::Context ctx(threads);
  benchmark::DoNotOptimize(pl::generate(model, o, ctx));  // plans the activation arena
  double seconds = 0;
  for (auto _ : state) {
    ++o.seed;
    const auto start = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(pl::generate(model, o, ctx));
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  const auto resolved = pl::resolve_options(model, o);
  state.SetLabel(resolved.sampler + "/" + resolved.schedule + ", cfg " + std::to_string(*resolved.cfg_scale).substr(0, 3));
  state.counters["images_per_s"] = static_cast<double>(state.iterations()) / seconds;
  state.counters["ms_per_image"] = 1e3 * seconds / static_cast<double>(state.iterations());
}

void BM_digits_dit(benchmark::State& state) {
  static const pl::Model model = pl::Model::load(models_dir() / "digits-dit");
  run_generation(state, model);
}
BENCHMARK(BM_digits_dit)->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_digits_unet(benchmark::State& state) {
  static const pl::Model model = pl::Model::load(models_dir() / "digits-unet");
  run_generation(state, model);
}
BENCHMARK(BM_digits_unet)->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_emoji(benchmark::State& state) {
  static const pl::Model model = pl::Model::load(models_dir() / "emoji");
  run_generation(state, model, true);
}
BENCHMARK(BM_emoji)->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_emoji_cold(benchmark::State& state) {
  const auto threads = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    const pl::Model model = pl::Model::load(models_dir() / "emoji");
    diffuse::kernels::Context ctx(threads);
    pl::GenerateOptions o;
    o.prompts = {"red apple"};
    benchmark::DoNotOptimize(pl::generate(model, o, ctx));
  }
}
BENCHMARK(BM_emoji_cold)->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
