// SPDX-License-Identifier: MIT
// AutoencoderTiny (TAESD) against diffusers 0.42.1 on the seeded fixtures of tests/data/models/taesd_*
// (tools/make_taesd_fixtures.py): decode and encode of the 8-channel taesd structure, the same weights
// under the original madebyollin/taesd names (F16 files), and the real taesd configuration (weights,
// latent and image regenerated from the recipe's seeds) decoding a 64x64 latent into a 512x512 image.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "diffuse/core/convert.hpp"
#include "diffuse/core/error.hpp"
#include "diffuse/core/random.hpp"
#include "diffuse/io/safetensors.hpp"
#include "diffuse/models/taesd.hpp"
#include "models/model_fixture.hpp"
#include "temp_dir.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using diffuse::Tensor;
using diffuse::models::AutoencoderTiny;
using diffuse::models::AutoencoderTinyConfig;

namespace {

fs::path case_dir(const char* name) { return fs::path(DIFFUSE_TEST_DATA_DIR) / "models" / name; }

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// torch's own f32 error on these cases is 2.8e-7 .. 7.3e-7 x max|ref| (taesd_cases.json); the bound is
// 1e-5 x max|ref|, more than 10x the largest of them (the issue asks for 1e-4).
constexpr double kBound = 1e-5;

// Decode and encode of `io_dir`'s io.safetensors at 1 and 2 threads: within kBound of diffusers, and
// bit-identical across the thread counts.
void check_small(const AutoencoderTiny& vae, const fs::path& io_dir) {
  const auto io = diffuse::io::SafetensorsFile::open(io_dir / "io.safetensors");
  Tensor dec1, enc1;
  for (std::size_t threads : {1u, 2u}) {
    diffuse::kernels::Context ctx(threads);
    const Tensor dec = vae.decode(io.to_f32("z"), ctx);
    const Tensor enc = vae.encode(io.to_f32("image"), ctx);
    const double e_dec = diffuse_test::rel_error(dec, io.to_f32("decoded"));
    const double e_enc = diffuse_test::rel_error(enc, io.to_f32("latents"));
    EXPECT_LE(e_dec, kBound) << threads;
    EXPECT_LE(e_enc, kBound) << threads;
    std::printf("decode %.3g, encode %.3g x max|ref| at %zu threads\n", e_dec, e_enc, threads);
    if (threads == 1) {
      dec1 = dec;
      enc1 = enc;
    } else {
      EXPECT_TRUE(same_bits(dec, dec1)) << "decode differs between 1 and 2 threads";
      EXPECT_TRUE(same_bits(enc, enc1)) << "encode differs between 1 and 2 threads";
    }
  }
}

}  // namespace

TEST(AutoencoderTiny, SmallDecodeEncodeMatchDiffusers) {
  const AutoencoderTiny vae = AutoencoderTiny::load(case_dir("taesd_small"));
  EXPECT_EQ(vae.decoder_scale_factor(), 8u);
  EXPECT_EQ(vae.encoder_scale_factor(), 8u);
  EXPECT_EQ(vae.parameters(), 39527u);  // sum(p.numel()) in diffusers (taesd_cases.json)
  EXPECT_EQ(vae.config().num_decoder_blocks, (std::vector<std::size_t>{3, 3, 3, 1}));
  check_small(vae, case_dir("taesd_small"));
  // 20 -> 10 -> 5 -> 3 columns: the stride-2 convs round up, as torch's.
  const auto io = diffuse::io::SafetensorsFile::open(case_dir("taesd_small") / "io.safetensors");
  EXPECT_EQ(io.to_f32("latents").shape(), (diffuse::Shape{2, 4, 3, 3}));
}

TEST(AutoencoderTiny, OriginalNamesGiveIdenticalOutput) {
  // The folder holds taesd_decoder.safetensors / taesd_encoder.safetensors (F16) and no config.json:
  // load() recognises the original files and configures them by family("taesd"), except the channels,
  // which the small case changes; load_original takes the config explicitly.
  const auto cfg = AutoencoderTinyConfig::from_json(diffuse::io::ModelDir::open(case_dir("taesd_small")).config(),
                                                    "taesd_small config");
  const fs::path o = case_dir("taesd_small_orig");
  const AutoencoderTiny orig =
      AutoencoderTiny::load_original(o / "taesd_decoder.safetensors", o / "taesd_encoder.safetensors", cfg);
  const AutoencoderTiny diff = AutoencoderTiny::load(case_dir("taesd_small"));
  EXPECT_EQ(orig.parameters(), diff.parameters());
  const auto io = diffuse::io::SafetensorsFile::open(case_dir("taesd_small") / "io.safetensors");
  diffuse::kernels::Context ctx(2);
  EXPECT_TRUE(same_bits(orig.decode(io.to_f32("z"), ctx), diff.decode(io.to_f32("z"), ctx)));
  EXPECT_TRUE(same_bits(orig.encode(io.to_f32("image"), ctx), diff.encode(io.to_f32("image"), ctx)));
  check_small(orig, case_dir("taesd_small"));

  // A folder of original files is recognised by load(); with no config.json it is the published taesd
  // config, whose 64 channels these 8-channel files do not have: the error names the tensor and shapes.
  diffuse_test::expect_error<diffuse::shape_error>([&] { AutoencoderTiny::load(o); },
                                                   {"'1.weight' (asked as 'decoder.layers.0.weight')", "[8, 4, 3, 3]"});
  diffuse_test::TempDir tmp("taesd_orig");
  fs::copy_file(o / "taesd_decoder.safetensors", tmp.path() / "taesd_decoder.safetensors");
  fs::copy_file(case_dir("taesd_small") / "config.json", tmp.path() / "config.json");
  const AutoencoderTiny dec_only = AutoencoderTiny::load(tmp.path());
  EXPECT_TRUE(dec_only.has_decoder());
  EXPECT_FALSE(dec_only.has_encoder());
  EXPECT_TRUE(same_bits(dec_only.decode(io.to_f32("z"), ctx), diff.decode(io.to_f32("z"), ctx)));
  diffuse_test::expect_error<diffuse::value_error>([&] { dec_only.encode(io.to_f32("image"), ctx); },
                                                   {"without an encoder"});
}

// BF16 storage: the weights stored as BF16 give the bits of the same (bf16-rounded) weights stored as F32,
// and stay near diffusers' f32 output (bf16 has 8 bits of mantissa).
TEST(AutoencoderTiny, Bf16StorageIsTheRoundedWeights) {
  const auto w = diffuse::io::SafetensorsFile::open(case_dir("taesd_small") / "diffusion_pytorch_model.safetensors");
  std::map<std::string, Tensor> rounded;
  for (const std::string& n : w.names()) {
    Tensor t = w.to_f32(n);
    for (std::size_t i = 0; i < t.size(); ++i)
      t.data()[i] = diffuse::bf16_to_f32_scalar(diffuse::f32_to_bf16_scalar(t.data()[i]));
    rounded.emplace(n, std::move(t));
  }
  diffuse_test::TempDir tmp("taesd_bf16");
  for (const char* sub : {"bf16", "f32"}) {
    fs::create_directories(tmp.path() / sub);
    fs::copy_file(case_dir("taesd_small") / "config.json", tmp.path() / sub / "config.json");
    diffuse::io::save_safetensors(tmp.path() / sub / "diffusion_pytorch_model.safetensors", rounded, {},
                                  sub[0] == 'b' ? diffuse::DType::BF16 : diffuse::DType::F32);
  }
  const AutoencoderTiny a = AutoencoderTiny::load(tmp.path() / "bf16"), b = AutoencoderTiny::load(tmp.path() / "f32");
  const auto io = diffuse::io::SafetensorsFile::open(case_dir("taesd_small") / "io.safetensors");
  diffuse::kernels::Context ctx(2);
  const Tensor dec = a.decode(io.to_f32("z"), ctx);
  EXPECT_TRUE(same_bits(dec, b.decode(io.to_f32("z"), ctx)));
  EXPECT_TRUE(same_bits(a.encode(io.to_f32("image"), ctx), b.encode(io.to_f32("image"), ctx)));
  EXPECT_LE(diffuse_test::rel_error(dec, io.to_f32("decoded")), 0.05);
}

TEST(AutoencoderTiny, LatentScalings) {
  const AutoencoderTiny vae = AutoencoderTiny::load(case_dir("taesd_small"));
  Tensor x({1, 4, 1, 2});
  const float v[] = {-4.0f, -1.0f, 0.0f, 1.5f, 2.9f, 3.0f, 6.0f, 100.0f};
  std::copy(std::begin(v), std::end(v), x.data());
  const Tensor s = vae.scale_latents(x);  // clamp(x / 6 + 0.5, 0, 1)
  EXPECT_EQ(s.data()[0], 0.0f);
  EXPECT_EQ(s.data()[1], -1.0f / 6.0f + 0.5f);
  EXPECT_EQ(s.data()[2], 0.5f);
  EXPECT_EQ(s.data()[7], 1.0f);
  const Tensor u = vae.unscale_latents(s);  // (x - 0.5) * 6
  EXPECT_NEAR(u.data()[3], 1.5f, 1e-6);
  EXPECT_EQ(u.data()[0], -3.0f);
  // scaling_factor 1.0 and no shift: the diffusion model's latents are the decoder's.
  EXPECT_TRUE(same_bits(vae.to_vae_latents(x), x));
  EXPECT_TRUE(same_bits(vae.to_model_latents(x), x));
  const AutoencoderTinyConfig f1 = AutoencoderTinyConfig::family("taef1");
  EXPECT_EQ(f1.latent_channels, 16u);
  EXPECT_EQ(*f1.shift_factor, 0.1159);
}

TEST(AutoencoderTiny, BadInputsAndConfigsAreTypedErrors) {
  const AutoencoderTiny vae = AutoencoderTiny::load(case_dir("taesd_small"));
  diffuse::kernels::Context ctx(1);
  diffuse_test::expect_error<diffuse::shape_error>([&] { vae.decode(Tensor({1, 3, 4, 4}), ctx); },
                                                   {"z: expected [batch, 4, height, width]", "[1, 3, 4, 4]"});
  diffuse_test::expect_error<diffuse::shape_error>([&] { vae.encode(Tensor({1, 4, 8, 8}), ctx); },
                                                   {"image: expected [batch, 3, height, width]"});
  diffuse_test::expect_error<diffuse::shape_error>([&] { vae.decode(Tensor({4, 4}), ctx); }, {"z: expected"});
  Tensor bad({1, 4, 2, 2});
  bad.data()[5] = std::nanf("");
  diffuse_test::expect_error<diffuse::value_error>([&] { vae.decode(bad, ctx); }, {"non-finite value at flat index 5"});
  Tensor bad_img({1, 3, 8, 8});
  bad_img.data()[7] = INFINITY;
  diffuse_test::expect_error<diffuse::value_error>([&] { vae.encode(bad_img, ctx); }, {"image: non-finite", "index 7"});
  diffuse_test::expect_error<diffuse::value_error>([] { AutoencoderTinyConfig::family("taesd4"); },
                                                   {"unknown TAESD family"});

  // The memory check refuses before allocating.
  diffuse::kernels::Context small(1);
  small.arena().set_limit(1u << 20);
  diffuse_test::expect_error<diffuse::memory_error>([&] { vae.decode(Tensor({1, 4, 64, 64}), small); },
                                                    {"decoding a [1, 4, 64, 64] latent needs", "memory limit"});

  const nlohmann::json base = diffuse::io::ModelDir::open(case_dir("taesd_small")).config();
  auto refused = [&](const char* key, nlohmann::json value, std::initializer_list<std::string> parts) {
    nlohmann::json j = base;
    j[key] = std::move(value);
    diffuse_test::expect_error<diffuse::format_error>([&] { AutoencoderTinyConfig::from_json(j, "cfg"); }, parts);
  };
  refused("act_fn", "silu", {"\"act_fn\"", "\"silu\" is not supported"});
  refused("upsample_fn", "bilinear", {"\"upsample_fn\"", "not supported"});
  refused("upsampling_scaling_factor", 3, {"\"upsampling_scaling_factor\"", "3 is not supported"});
  refused("decoder_block_out_channels", {8, 8, 8, 1u << 30}, {"\"decoder_block_out_channels\""});
  refused("encoder_block_out_channels", {8, 16, 8, 8}, {"\"encoder_block_out_channels\"", "must all be equal"});
  refused("num_decoder_blocks", {3, 3, 1}, {"\"num_decoder_blocks\"", "has 3 entries"});
  refused("num_encoder_blocks", {1, 3, 3, 1000}, {"\"num_encoder_blocks\""});
  refused("latent_channels", 1u << 20, {"\"latent_channels\""});
  refused("in_channels", -3, {"\"in_channels\""});
  refused("scaling_factor", 0, {"\"scaling_factor\"", "positive"});
  refused("latents_mean", {0.0, 1.0}, {"\"latents_mean\"", "latent_channels = 4"});
  refused("block_out_channels", {64, 64, 64, 64}, {"\"block_out_channels\""});
  refused("encoder_block_out_channels", std::vector<std::size_t>(17, 8), {"\"encoder_block_out_channels\""});

  // A file whose tensor has another shape than the config implies: the error names the tensor.
  nlohmann::json j = base;
  j["latent_channels"] = 16;
  diffuse_test::TempDir tmp("taesd_bad");
  fs::copy_file(case_dir("taesd_small") / "diffusion_pytorch_model.safetensors",
                tmp.path() / "diffusion_pytorch_model.safetensors");
  std::ofstream(tmp.path() / "config.json") << j.dump();
  diffuse_test::expect_error<diffuse::shape_error>([&] { AutoencoderTiny::load(tmp.path()); },
                                                   {"encoder.layers.14.weight", "[4, 8, 3, 3]"});
}

TEST(AutoencoderTiny, TaesdRecipeDecodes512x512LikeDiffusers) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "the 512x512 decode is skipped under a sanitizer (taesd_small covers the same code)";
#endif
  diffuse_test::TempDir tmp("taesd_recipe");
  const fs::path dir = diffuse_test::materialize_recipe(case_dir("taesd_recipe"), tmp.path() / "taesd");
  const AutoencoderTiny vae = AutoencoderTiny::load(dir);
  EXPECT_EQ(vae.parameters(), 2445063u);
  const std::uint64_t seed = diffuse_test::read_recipe(case_dir("taesd_recipe")).seed;
  diffuse::TorchGenerator gz(seed + 1), gx(seed + 2);
  const Tensor z = diffuse::randn(gz, {1, 4, 64, 64});
  Tensor image = diffuse::randn(gx, {1, 3, 512, 512});
  for (std::size_t i = 0; i < image.size(); ++i) image.data()[i] = std::clamp(image.data()[i], -1.0f, 1.0f);
  const auto io = diffuse::io::SafetensorsFile::open(case_dir("taesd_recipe") / "io.safetensors");

  diffuse::kernels::Context ctx(2);
  const Tensor dec = vae.decode(z, ctx);
  ASSERT_EQ(dec.shape(), (diffuse::Shape{1, 3, 512, 512}));
  Tensor sub({1, 3, 64, 64}), patch({1, 3, 32, 32});
  for (std::size_t c = 0; c < 3; ++c) {
    for (std::size_t y = 0; y < 64; ++y)
      for (std::size_t x = 0; x < 64; ++x) sub.data()[(c * 64 + y) * 64 + x] = dec.data()[(c * 512 + 8 * y) * 512 + 8 * x];
    for (std::size_t y = 0; y < 32; ++y)
      for (std::size_t x = 0; x < 32; ++x)
        patch.data()[(c * 32 + y) * 32 + x] = dec.data()[(c * 512 + 240 + y) * 512 + 240 + x];
  }
  const double e_sub = diffuse_test::rel_error(sub, io.to_f32("decoded_sub8"));
  const double e_patch = diffuse_test::rel_error(patch, io.to_f32("decoded_patch"));
  const double e_enc = diffuse_test::rel_error(vae.encode(image, ctx), io.to_f32("latents"));
  std::printf("taesd 512x512: decode %.3g (every 8th pixel), %.3g (32x32 patch), encode %.3g x max|ref|; "
              "decode activations %.1f MiB (estimate)\n",
              e_sub, e_patch, e_enc, static_cast<double>(vae.decode_bytes(1, 64, 64)) / 1048576.0);
  EXPECT_LE(e_sub, kBound);
  EXPECT_LE(e_patch, kBound);
  EXPECT_LE(e_enc, kBound);
}
