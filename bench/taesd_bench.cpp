// SPDX-License-Identifier: MIT
// AutoencoderTiny (TAESD) at the real madebyollin/taesd configuration (recipe weights of
// tests/data/models/taesd_recipe, materialised once into the temp dir): decode of a 64x64 latent into a
// 512x512 image, and encode of that image, at 1 and 2 threads. Counters: ms per call, GFLOPS (the
// direct convolutions' 2 C_out C_in kh kw H_out W_out per conv, so the Upsample2D phase trick and any
// Winograd show as a higher rate) and the activation arena's peak.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <filesystem>

#include "../tests/models/model_fixture.hpp"
#include "diffuse/kernels/parallel.hpp"
#include "diffuse/models/taesd.hpp"

namespace {

namespace fs = std::filesystem;

fs::path source_dir() { return fs::path(__FILE__).parent_path().parent_path(); }

const diffuse::models::AutoencoderTiny& taesd() {
  static const diffuse::models::AutoencoderTiny vae = [] {
    const fs::path dir = diffuse_test::materialize_recipe(source_dir() / "tests" / "data" / "models" / "taesd_recipe",
                                                          fs::temp_directory_path() / "diffuse_taesd_recipe");
    return diffuse::models::AutoencoderTiny::load(dir);
  }();
  return vae;
}

// Direct-convolution flops of the taesd decoder on an h x w latent (64 channels; blocks 3, 3, 3, 1).
double decoder_flops(double h, double w) {
  const double C = 64, k = 9;
  const double conv = 2 * C * C * k;  // per output pixel
  double f = 2 * C * 4 * k * h * w;   // conv_in
  const int blocks[] = {3, 3, 3, 1};
  for (int i = 0; i < 4; ++i) {
    f += blocks[i] * 3 * conv * h * w;
    if (i < 3) {
      h *= 2, w *= 2;
      f += conv * h * w;  // the conv after the upsampling
    }
  }
  return f + 2 * 3 * C * k * h * w;  // conv_out
}

double encoder_flops(double h, double w) {
  const double C = 64, k = 9, conv = 2 * C * C * k;
  double f = 2 * C * 3 * k * h * w;  // the first conv
  const int blocks[] = {1, 3, 3, 3};
  for (int i = 0; i < 4; ++i) {
    if (i > 0) {
      h = std::ceil(h / 2), w = std::ceil(w / 2);
      f += conv * h * w;  // stride 2
    }
    f += blocks[i] * 3 * conv * h * w;
  }
  return f + 2 * 4 * C * k * h * w;
}

template <class F>
void timed(benchmark::State& state, diffuse::kernels::Context& ctx, double flops, F run) {
  benchmark::DoNotOptimize(run());  // plans the arena
  double seconds = 0;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(run());
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  state.counters["ms"] = 1e3 * seconds / static_cast<double>(state.iterations());
  state.counters["GFLOPS"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["arena_MB"] = static_cast<double>(ctx.arena().peak_bytes()) / (1024.0 * 1024.0);
}

/// taesd decode, [1, 4, 64, 64] -> [1, 3, 512, 512].
void BM_taesd_decode_512(benchmark::State& state) {
  const auto& vae = taesd();
  diffuse::kernels::Context ctx(static_cast<std::size_t>(state.range(0)));
  diffuse::Tensor z({1, 4, 64, 64});
  for (std::size_t i = 0; i < z.size(); ++i) z[i] = 2.0f * std::sin(0.731f * static_cast<float>(i));
  timed(state, ctx, decoder_flops(64, 64), [&] { return vae.decode(z, ctx); });
}
BENCHMARK(BM_taesd_decode_512)->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

/// taesd encode, [1, 3, 512, 512] -> [1, 4, 64, 64].
void BM_taesd_encode_512(benchmark::State& state) {
  const auto& vae = taesd();
  diffuse::kernels::Context ctx(static_cast<std::size_t>(state.range(0)));
  diffuse::Tensor x({1, 3, 512, 512});
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.731f * static_cast<float>(i));
  timed(state, ctx, encoder_flops(512, 512), [&] { return vae.encode(x, ctx); });
}
BENCHMARK(BM_taesd_encode_512)->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
