// SPDX-License-Identifier: MIT
// AutoencoderKL at the real sd-vae-ft-ema / DiT configuration (recipe weights of
// tests/data/models/vae_sd_recipe, materialised once into the temp dir): decode of 32x32 and 64x64
// latents (256 and 512 pixel images) at 1 and 2 threads, untiled, and of a 128x128 latent (a
// 1024x1024 image) with the automatic tiling the pipeline uses (tiled above 1 GiB of activations).
// Counters: ms per call, GFLOPS (direct convolutions, 2 C_out C_in kh kw per output pixel, and the
// attention's matrix products: so the upsampler's 2x2 phase trick and Winograd show as a higher rate)
// and the activation arena's peak (arena_MB): the activation memory of the decode (the weights, 335
// MB in f32, are not in it).
#include <benchmark/benchmark.h>

#include <chrono>
#include <filesystem>

#include "../tests/models/model_fixture.hpp"
#include "diffuse/core/random.hpp"
#include "diffuse/kernels/parallel.hpp"
#include "diffuse/models/vae.hpp"

namespace {

namespace fs = std::filesystem;
using diffuse::models::VaeDecodeOptions;

fs::path source_dir() { return fs::path(__FILE__).parent_path().parent_path(); }

const diffuse::models::AutoencoderKL& vae() {
  static const diffuse::models::AutoencoderKL v = [] {
    const fs::path dir = diffuse_test::materialize_recipe(source_dir() / "tests" / "data" / "models" / "vae_sd_recipe",
                                                          fs::temp_directory_path() / "diffuse_vae_sd_recipe");
    return diffuse::models::AutoencoderKL::load(dir);
  }();
  return v;
}

/// Direct-convolution and attention flops of the decoder on an h x w latent.
double decoder_flops(const diffuse::models::AutoencoderKLConfig& c, double h, double w) {
  const auto conv = [](double in, double out, double k, double pixels) { return 2 * in * out * k * pixels; };
  const auto resnet = [&](double in, double out, double pixels) {
    return conv(in, out, 9, pixels) + conv(out, out, 9, pixels) + (in != out ? conv(in, out, 1, pixels) : 0);
  };
  const double top = static_cast<double>(c.block_out_channels.back());
  double f = conv(static_cast<double>(c.latent_channels), static_cast<double>(c.latent_channels), 1, h * w);  // post_quant_conv
  f += conv(static_cast<double>(c.latent_channels), top, 9, h * w);
  f += 2 * resnet(top, top, h * w) + 4 * 2 * top * top * h * w + 2 * 2 * h * w * h * w * top;  // mid: resnets, q k v o, QK and AV
  double ch = top;
  for (std::size_t i = 0; i < c.block_out_channels.size(); ++i) {
    const double out = static_cast<double>(c.block_out_channels[c.block_out_channels.size() - 1 - i]);
    for (std::size_t r = 0; r <= c.layers_per_block; ++r) {
      f += resnet(ch, out, h * w);
      ch = out;
    }
    if (i + 1 < c.block_out_channels.size()) {
      h *= 2, w *= 2;
      f += conv(ch, ch, 9, h * w);
    }
  }
  return f + conv(ch, static_cast<double>(c.out_channels), 9, h * w);
}

void decode(benchmark::State& state, std::size_t latent, VaeDecodeOptions::Tiling tiling) {
  const auto& v = vae();
  diffuse::kernels::Context ctx(static_cast<std::size_t>(state.range(0)));
  diffuse::TorchGenerator g(0);
  const diffuse::Tensor z = diffuse::randn(g, {1, 4, latent, latent});
  const VaeDecodeOptions o{tiling, 0};
  benchmark::DoNotOptimize(v.decode(z, ctx, o));  // plans the arena
  double seconds = 0;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(v.decode(z, ctx, o));
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  const double lat = static_cast<double>(latent);
  state.counters["ms"] = 1e3 * seconds / static_cast<double>(state.iterations());
  state.counters["GFLOPS"] =
      benchmark::Counter(decoder_flops(v.config(), lat, lat) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["arena_MB"] = static_cast<double>(ctx.arena().peak_bytes()) / (1024.0 * 1024.0);
  state.counters["estimate_MB"] =
      static_cast<double>(v.decode_peak_bytes(latent, latent, o)) / (1024.0 * 1024.0);
}

void BM_vae_decode_256(benchmark::State& state) { decode(state, 32, VaeDecodeOptions::Tiling::off); }
void BM_vae_decode_512(benchmark::State& state) { decode(state, 64, VaeDecodeOptions::Tiling::off); }
void BM_vae_decode_1024_auto(benchmark::State& state) { decode(state, 128, VaeDecodeOptions::Tiling::automatic); }

}  // namespace

BENCHMARK(BM_vae_decode_256)->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_vae_decode_512)->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_vae_decode_1024_auto)->ArgName("threads")->Arg(2)->Iterations(1)->Unit(benchmark::kMillisecond)->UseRealTime();
