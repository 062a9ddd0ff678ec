// SPDX-License-Identifier: MIT
// AutoencoderKL against diffusers 0.42.1 on the seeded fixtures of tests/data/models/vae_*
// (tools/make_vae_fixtures.py): decode, encode moments, diffusers' tiled decode and encode, the
// posterior sample with torch's generator, the LDM single-file names, 16 latent channels without
// quant convs, and the real sd-vae-ft-ema configuration (weights regenerated from the recipe).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "diffuse/core/error.hpp"
#include "diffuse/io/safetensors.hpp"
#include "diffuse/models/vae.hpp"
#include "models/model_fixture.hpp"
#include "temp_dir.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using diffuse::Tensor;
using diffuse::models::AutoencoderKL;
using diffuse::models::AutoencoderKLConfig;

namespace {

fs::path case_dir(const char* name) { return fs::path(DIFFUSE_TEST_DATA_DIR) / "models" / name; }

// torch's own f32 error on these cases is 0.5e-6 .. 1.3e-6 x max|ref| (vae_cases.json); the bound
// is 8x the largest of them.
constexpr double kBound = 1e-5;

void check_small(const AutoencoderKL& vae, const fs::path& io_dir) {
  const auto io = diffuse::io::SafetensorsFile::open(io_dir / "io.safetensors");
  for (std::size_t threads : {1u, 2u}) {
    diffuse::kernels::Context ctx(threads);
    const double e_dec = diffuse_test::rel_error(vae.decode(io.to_f32("z"), ctx), io.to_f32("decoded"));
    const double e_enc = diffuse_test::rel_error(vae.encode_moments(io.to_f32("image"), ctx), io.to_f32("moments"));
    EXPECT_LE(e_dec, kBound) << threads;
    EXPECT_LE(e_enc, kBound) << threads;
    std::printf("decode %.3g, encode %.3g x max|ref| at %zu threads\n", e_dec, e_enc, threads);
  }
}

}  // namespace

TEST(AutoencoderKL, SmallDecodeEncodeMatchDiffusers) {
  const AutoencoderKL vae = AutoencoderKL::load(case_dir("vae_small"));
  EXPECT_EQ(vae.scale_factor(), 4u);
  check_small(vae, case_dir("vae_small"));
}

TEST(AutoencoderKL, TiledDecodeAndEncodeMatchDiffusersTiling) {
  const AutoencoderKL vae = AutoencoderKL::load(case_dir("vae_small"));
  const auto io = diffuse::io::SafetensorsFile::open(case_dir("vae_small") / "io.safetensors");
  diffuse::kernels::Context ctx(2);
  const Tensor z = io.to_f32("z_big");
  EXPECT_LE(diffuse_test::rel_error(vae.decode_tiled(z, ctx), io.to_f32("tiled_decoded")), kBound);
  EXPECT_LE(diffuse_test::rel_error(vae.decode(z, ctx, {diffuse::models::VaeDecodeOptions::Tiling::off, 0}), io.to_f32("untiled_decoded")),
            kBound);
  // Automatic tiling with a threshold below this decode's activations picks the tiled path.
  EXPECT_LE(diffuse_test::rel_error(vae.decode(z, ctx, {diffuse::models::VaeDecodeOptions::Tiling::automatic, 1}), io.to_f32("tiled_decoded")),
            kBound);
  // The tiles differ from the whole image (seams are blended, not removed): a real difference.
  EXPECT_GT(diffuse_test::rel_error(io.to_f32("tiled_decoded"), io.to_f32("untiled_decoded")), 1e-3);
  EXPECT_LE(diffuse_test::rel_error(vae.encode_moments_tiled(io.to_f32("image_big"), ctx), io.to_f32("tiled_moments")), kBound);
}

TEST(AutoencoderKL, PosteriorSampleIsTorchs) {
  const AutoencoderKL vae = AutoencoderKL::load(case_dir("vae_small"));
  const auto io = diffuse::io::SafetensorsFile::open(case_dir("vae_small") / "io.safetensors");
  diffuse::kernels::Context ctx(1);
  const Tensor m = vae.encode_moments(io.to_f32("image"), ctx);
  diffuse::TorchGenerator gen(7);
  EXPECT_LE(diffuse_test::rel_error(AutoencoderKL::posterior_sample(m, gen), io.to_f32("posterior_sample_seed7")), kBound);
  const Tensor mean = AutoencoderKL::posterior_mean(m);
  EXPECT_EQ(mean.dim(1), 4u);
}

TEST(AutoencoderKL, LdmSingleFileNamesGiveTheSameNetwork) {
  ASSERT_TRUE(AutoencoderKL::has_ldm_names(diffuse::io::ModelDir::open(case_dir("vae_small_ldm") / "model.safetensors"),
                                           "first_stage_model."));
  const auto cfg = AutoencoderKLConfig::from_json(
      diffuse::io::ModelDir::open(case_dir("vae_small")).config(), "vae_small config");
  const AutoencoderKL vae = AutoencoderKL::load_ldm(
      diffuse::io::ModelDir::open(case_dir("vae_small_ldm") / "model.safetensors"), "first_stage_model.", cfg);
  check_small(vae, case_dir("vae_small"));
}

TEST(AutoencoderKL, SixteenChannelsNoQuantConvsNoMidAttention) {
  const AutoencoderKL vae = AutoencoderKL::load(case_dir("vae_small_16ch"));
  EXPECT_FALSE(vae.config().use_quant_conv);
  EXPECT_EQ(vae.config().latents_mean.size(), 16u);
  check_small(vae, case_dir("vae_small_16ch"));
  // latents_mean / latents_std scaling round-trips and is the diffusers formula z = x * std / s + mean.
  Tensor x({1, 16, 1, 1}, 0.5f);
  const Tensor z = vae.to_vae_latents(x);
  EXPECT_NEAR(z.data()[3], 0.5 * 1.15 / 1.5305 + 0.03, 1e-6);
  EXPECT_NEAR(vae.to_model_latents(z).data()[3], 0.5, 1e-6);
}

TEST(AutoencoderKL, BadInputsAreTypedErrors) {
  const AutoencoderKL vae = AutoencoderKL::load(case_dir("vae_small"));
  diffuse::kernels::Context ctx(1);
  diffuse_test::expect_error<diffuse::shape_error>([&] { vae.decode(Tensor({1, 3, 4, 4}), ctx); },
                                                   {"z: expected [batch, 4, height, width]"});
  diffuse_test::expect_error<diffuse::shape_error>([&] { vae.encode_moments(Tensor({1, 3, 10, 8}), ctx); },
                                                   {"multiples of 4"});
  Tensor bad({1, 4, 2, 2});
  bad.data()[5] = std::nanf("");
  diffuse_test::expect_error<diffuse::value_error>([&] { vae.decode(bad, ctx); }, {"non-finite value at flat index 5"});
  diffuse_test::expect_error<diffuse::value_error>([] { AutoencoderKLConfig::family("sd4"); }, {"unknown VAE family"});
  nlohmann::json j = diffuse::io::ModelDir::open(case_dir("vae_small")).config();
  j["up_block_types"][1] = "AttnUpDecoderBlock2D";
  diffuse_test::expect_error<diffuse::format_error>([&] { AutoencoderKLConfig::from_json(j, "cfg"); },
                                                    {"\"AttnUpDecoderBlock2D\" is not supported"});
  j = diffuse::io::ModelDir::open(case_dir("vae_small")).config();
  j["block_out_channels"] = {8, 16, 1u << 30};
  diffuse_test::expect_error<diffuse::format_error>([&] { AutoencoderKLConfig::from_json(j, "cfg"); },
                                                    {"block_out_channels"});
}

TEST(AutoencoderKL, SdVaeFtEmaRecipeMatchesDiffusers) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "the 83.7 M-parameter VAE is skipped under a sanitizer (vae_small covers the same code)";
#endif
  diffuse_test::TempDir tmp("vae_recipe");
  const fs::path dir = diffuse_test::materialize_recipe(case_dir("vae_sd_recipe"), tmp.path() / "vae");
  const AutoencoderKL vae = AutoencoderKL::load(dir);
  EXPECT_EQ(vae.parameters(), 83653863u);
  const auto io = diffuse::io::SafetensorsFile::open(case_dir("vae_sd_recipe") / "io.safetensors");
  diffuse::kernels::Context ctx(2);
  const double e_dec = diffuse_test::rel_error(vae.decode(io.to_f32("z"), ctx), io.to_f32("decoded"));
  const double e_enc = diffuse_test::rel_error(vae.encode_moments(io.to_f32("image"), ctx), io.to_f32("moments"));
  std::printf("sd-vae-ft-ema: decode %.3g, encode %.3g x max|ref|; decode activations %.1f MiB (estimate)\n", e_dec,
              e_enc, static_cast<double>(vae.decode_bytes(1, 32, 32)) / 1048576.0);
  EXPECT_LE(e_dec, kBound);
  EXPECT_LE(e_enc, kBound);
}

TEST(AutoencoderKL, Sd3VaeRecipeMatchesDiffusers) {
  // The SD3 VAE configuration: 16 latent channels, no quant convs, shift_factor (Flux's differs only in
  // its scaling and shift).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "the 83.7 M-parameter VAE is skipped under a sanitizer (vae_small_16ch covers the same code)";
#endif
  diffuse_test::TempDir tmp("vae_sd3_recipe");
  const fs::path dir = diffuse_test::materialize_recipe(case_dir("vae_sd3_recipe"), tmp.path() / "vae");
  const AutoencoderKL vae = AutoencoderKL::load(dir);
  EXPECT_EQ(vae.config().latent_channels, 16u);
  EXPECT_FALSE(vae.config().use_quant_conv);
  ASSERT_TRUE(vae.config().shift_factor);
  EXPECT_DOUBLE_EQ(*vae.config().shift_factor, 0.0609);
  const auto io = diffuse::io::SafetensorsFile::open(case_dir("vae_sd3_recipe") / "io.safetensors");
  diffuse::kernels::Context ctx(2);
  const double e_dec = diffuse_test::rel_error(vae.decode(io.to_f32("z"), ctx), io.to_f32("decoded"));
  const double e_enc = diffuse_test::rel_error(vae.encode_moments(io.to_f32("image"), ctx), io.to_f32("moments"));
  std::printf("sd3 vae: decode %.3g, encode %.3g x max|ref|\n", e_dec, e_enc);
  EXPECT_LE(e_dec, kBound);
  EXPECT_LE(e_enc, kBound);
  // Model latents -> VAE latents as the SD3 pipeline does: latents / scaling_factor + shift_factor.
  Tensor l({1, 16, 1, 1});
  for (std::size_t c = 0; c < 16; ++c) l.data()[c] = static_cast<float>(c) - 8.0f;
  const Tensor z = vae.to_vae_latents(l);
  for (std::size_t c = 0; c < 16; ++c)
    EXPECT_NEAR(z.data()[c], (static_cast<double>(c) - 8.0) / 1.5305 + 0.0609, 1e-6);
}

TEST(AutoencoderKL, SdxlFamilyScalesLatentsBy013025) {
  const auto c = AutoencoderKLConfig::family("sdxl");
  EXPECT_DOUBLE_EQ(c.scaling_factor, 0.13025);
  EXPECT_EQ(c.latent_channels, 4u);
  EXPECT_EQ(c.block_out_channels, (std::vector<std::size_t>{128, 256, 512, 512}));
  EXPECT_FALSE(c.shift_factor);
}
