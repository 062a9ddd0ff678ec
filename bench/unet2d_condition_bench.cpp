// SPDX-License-Identifier: MIT
// UNet2DConditionModel at the real Stable Diffusion 1.5 configuration (859.5 M parameters, recipe
// weights of tests/data/models/unetc_sd15_recipe, materialised once into the temp dir): one forward
// of a 64x64 latent (a 512x512 image) at batch 2 (the [uncond; cond] pair of classifier-free
// guidance) with [2, 77, 768] text states, at 1 and 2 threads: one sampler step.
// Counters: ms per forward, GFLOPS (direct convolutions 2 C_out C_in kh kw per output pixel, the
// linears 2 in out per token, the attention's two matrix products 4 q_len kv_len inner; so the
// upsampler's 2x2 phases and Winograd show as a higher rate) and the activation arena's peak
// (arena_MB; the weights, 3.4 GB in f32, are not in it).
#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <vector>

#include "../tests/models/model_fixture.hpp"
#include "diffuse/kernels/parallel.hpp"
#include "diffuse/models/unet2d_condition.hpp"

namespace {

namespace fs = std::filesystem;
using diffuse::models::UNet2DConditionConfig;
using diffuse::models::UNet2DConditionModel;

fs::path source_dir() { return fs::path(__FILE__).parent_path().parent_path(); }

const UNet2DConditionModel& sd15_unet() {
  static const UNet2DConditionModel u = [] {
    const fs::path dir = diffuse_test::materialize_recipe(
        source_dir() / "tests" / "data" / "models" / "unetc_sd15_recipe", fs::temp_directory_path() / "diffuse_unetc_sd15_recipe");
    return UNet2DConditionModel::load(dir);
  }();
  return u;
}

/// Flops of one forward of a batch-1 h x w latent with `tokens` text states (see the file comment).
double forward_flops(const UNet2DConditionConfig& c, double h, double w, double tokens) {
  const auto conv = [](double in, double out, double k, double pixels) { return 2 * in * out * k * k * pixels; };
  const double T = static_cast<double>(c.time_embed_dim()), D = static_cast<double>(c.cross_attention_dim[0]);
  const auto resnet = [&](double in, double out, double px) {
    return conv(in, out, 3, px) + conv(out, out, 3, px) + (in != out ? conv(in, out, 1, px) : 0) + 2 * T * out;
  };
  const auto transformer = [&](double ch, double px, std::size_t layers) {
    double f = 2 * 2 * ch * ch * px;  // proj_in, proj_out
    for (std::size_t l = 0; l < layers; ++l) {
      f += 4 * 2 * ch * ch * px + 4 * px * px * ch;                // attn1: q, k, v, out; scores and values
      f += 2 * 2 * ch * ch * px + 2 * 2 * D * ch * tokens + 4 * px * tokens * ch;  // attn2: q, out; k, v; products
      f += 2 * ch * 8 * ch * px + 2 * 4 * ch * ch * px;            // GEGLU ff
    }
    return f;
  };
  const std::vector<std::size_t>& ch = c.block_out_channels;
  const std::size_t nb = ch.size();
  double px = h * w, f = conv(static_cast<double>(c.in_channels), static_cast<double>(ch[0]), 3, px);
  std::vector<double> skips{static_cast<double>(ch[0])};
  double out = static_cast<double>(ch[0]);
  for (std::size_t i = 0; i < nb; ++i) {
    const double in = out;
    out = static_cast<double>(ch[i]);
    for (std::size_t j = 0; j < c.layers_per_block[i]; ++j) {
      f += resnet(j == 0 ? in : out, out, px);
      if (c.down_block_types[i] == "CrossAttnDownBlock2D") f += transformer(out, px, c.transformer_layers_per_block[i]);
      skips.push_back(out);
    }
    if (i + 1 < nb) {
      px /= 4;
      f += conv(out, out, 3, px);
      skips.push_back(out);
    }
  }
  f += 2 * resnet(out, out, px) + transformer(out, px, c.transformer_layers_per_block.back());
  for (std::size_t i = 0; i < nb; ++i) {
    const std::size_t r = nb - 1 - i;
    const double prev = out;
    out = static_cast<double>(ch[r]);
    for (std::size_t j = 0; j <= c.layers_per_block[r]; ++j) {
      const double skip = skips.back();
      skips.pop_back();
      f += resnet((j == 0 ? prev : out) + skip, out, px);
      if (c.up_block_types[i] == "CrossAttnUpBlock2D") f += transformer(out, px, c.transformer_layers_per_block[r]);
    }
    if (i + 1 < nb) {
      px *= 4;
      f += conv(out, out, 3, px);
    }
  }
  return f + conv(static_cast<double>(ch[0]), static_cast<double>(c.out_channels), 3, px);
}

/// SD 1.5 U-Net, 64x64 latent, batch 2, 77 tokens.
void BM_sd15_unet(benchmark::State& state) {
  const UNet2DConditionModel& unet = sd15_unet();
  const std::size_t batch = 2, size = 64, tokens = 77;
  const auto threads = static_cast<std::size_t>(state.range(0));
  diffuse::Tensor x({batch, 4, size, size}), text({batch, tokens, 768});
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.731f * static_cast<float>(i));
  for (std::size_t i = 0; i < text.size(); ++i) text[i] = std::cos(0.377f * static_cast<float>(i));
  const std::vector<float> t{999.0f, 999.0f};
  diffuse::kernels::Context ctx(threads);
  benchmark::DoNotOptimize(unet.forward(x, t, text, ctx));  // plans the arena
  double seconds = 0;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(unet.forward(x, t, text, ctx));
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  const double flops = static_cast<double>(batch) * forward_flops(unet.config(), size, size, tokens);
  state.counters["ms"] = 1e3 * seconds / static_cast<double>(state.iterations());
  state.counters["GFLOPS"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP"] = flops * 1e-9;
  state.counters["arena_MB"] = static_cast<double>(ctx.arena().peak_bytes()) / (1024.0 * 1024.0);
}
BENCHMARK(BM_sd15_unet)
    ->ArgNames({"threads"})
    ->Arg(1)
    ->Arg(2)
    ->Iterations(2)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
