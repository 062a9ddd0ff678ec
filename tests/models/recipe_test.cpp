// SPDX-License-Identifier: MIT
// The weight recipes of tests/data/models/*_recipe regenerate the weights tools/make_network_fixtures.py
// drew with torch, bit for bit (checked against the values and CRCs it recorded in manifest.json), so a
// drift in the recipe or in TorchGenerator is caught without running a network.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "diffuse/io/model_dir.hpp"
#include "diffuse/io/safetensors.hpp"
#include "models/model_fixture.hpp"
#include "temp_dir.hpp"

namespace {

namespace fs = std::filesystem;
using diffuse_test::models_data_dir;

std::uint32_t bits(float v) { return std::bit_cast<std::uint32_t>(v); }
float json_float(const nlohmann::json& j) { return static_cast<float>(j.get<double>()); }

TEST(Recipe, Cifar10ManifestIsTheDdpmCifar10Model) {
  const auto r = diffuse_test::read_recipe(models_data_dir() / "ddpm_cifar10_recipe");
  ASSERT_EQ(r.params.size(), 328u);  // models.md section 2, keys/ddpm_cifar10_unet2d.txt
  std::size_t n = 0;
  for (const auto& p : r.params) n += diffuse::shape_numel(p.shape);
  EXPECT_EQ(n, 35'746'307u);
  EXPECT_EQ(r.manifest.at("num_parameters").get<std::size_t>(), n);
  EXPECT_EQ(r.params.front().name, "conv_in.weight");
  EXPECT_EQ(r.params.back().name, "conv_out.bias");
}

// Regenerates every parameter; compares first/last values bit for bit, each parameter's CRC, the CRC over all
// (combined from the parameters' CRCs: one pass over the values) and the float64 sum (four partial sums: the
// serial one is latency-bound at 2.6 G values).
void check_recipe(const fs::path& dir) {
  const auto r = diffuse_test::read_recipe(dir);
  const auto& checks = r.manifest.at("checks");
  std::uint32_t crc_all = 0;
  double sum = 0, sum_abs = 0;
  std::size_t bad = 0;
  diffuse_test::for_each_recipe_param(r, [&](const diffuse_test::RecipeParam& p, std::span<const float> v) {
    if (p.name == checks.at("first_param").get<std::string>()) {
      EXPECT_EQ(bits(v.front()), bits(json_float(checks.at("first_param_first")))) << p.name;
      EXPECT_EQ(bits(v.back()), bits(json_float(checks.at("first_param_last")))) << p.name;
    }
    if (p.name == checks.at("last_param").get<std::string>()) {
      EXPECT_EQ(bits(v.front()), bits(json_float(checks.at("last_param_first")))) << p.name;
      EXPECT_EQ(bits(v.back()), bits(json_float(checks.at("last_param_last")))) << p.name;
    }
    const std::uint32_t crc = diffuse_test::crc32(v);
    if (crc != p.crc32 && ++bad <= 5) ADD_FAILURE() << "crc32 differs for " << p.name;
    crc_all = diffuse_test::crc32_combine(crc_all, crc, v.size_bytes());
    double s[4] = {0, 0, 0, 0}, a[4] = {0, 0, 0, 0};
    std::size_t i = 0;
    for (; i + 4 <= v.size(); i += 4) {
      for (std::size_t k = 0; k < 4; ++k) {
        s[k] += v[i + k];
        a[k] += std::abs(v[i + k]);
      }
    }
    for (; i < v.size(); ++i) {
      s[0] += v[i];
      a[0] += std::abs(v[i]);
    }
    sum += (s[0] + s[1]) + (s[2] + s[3]);
    sum_abs += (a[0] + a[1]) + (a[2] + a[3]);
  });
  EXPECT_EQ(bad, 0u) << "parameters whose values differ";
  EXPECT_EQ(crc_all, checks.at("crc32_all").get<std::uint32_t>());
  const double want = checks.at("sum_all").get<double>();
  EXPECT_NEAR(sum, want, 1e-9 * sum_abs);  // the CRCs are the exact check; the summation orders differ
}

/// A full-size U-Net recipe: its parameter count and total (the published model's), the manifest's
/// total, the first and last names, then every tensor regenerated against its checksum.
void check_unet_recipe(const std::string& folder, std::size_t tensors, std::size_t parameters) {
  const auto r = diffuse_test::read_recipe(models_data_dir() / folder);
  ASSERT_EQ(r.params.size(), tensors) << folder;
  std::size_t n = 0;
  for (const auto& p : r.params) n += diffuse::shape_numel(p.shape);
  EXPECT_EQ(n, parameters) << folder;
  EXPECT_EQ(r.manifest.at("num_parameters").get<std::size_t>(), n) << folder;
  EXPECT_EQ(r.params.front().name, "conv_in.weight") << folder;
  EXPECT_EQ(r.params.back().name, "conv_out.bias") << folder;
  check_recipe(models_data_dir() / folder);
}

TEST(Recipe, Cifar10WeightsMatchTorch) { check_recipe(models_data_dir() / "ddpm_cifar10_recipe"); }
TEST(Recipe, DitS2WeightsMatchTorch) { check_recipe(models_data_dir() / "dit_s2_recipe"); }
TEST(Recipe, Ddpm256WeightsMatchTorch) { check_recipe(models_data_dir() / "ddpm_256_recipe"); }

TEST(Recipe, EveryRecipeIsChecked) {
  // A new *_recipe fixture must get its checksum test here (and its forward in unet2d_test / dit_test).
  const std::vector<std::string> checked = {"ddpm_cifar10_recipe", "ddpm_256_recipe", "dit_s2_recipe", "dit_b2_recipe",
                                             "vae_sd_recipe", "vae_sd3_recipe", "taesd_recipe", "unetc_sd15_recipe",
                                             "unetc_sd21_recipe", "unetc_sdxl_recipe"};
  for (const auto& e : fs::directory_iterator(models_data_dir())) {
    const std::string name = e.path().filename().string();
    if (name.size() > 7 && name.ends_with("_recipe")) {
      EXPECT_NE(std::find(checked.begin(), checked.end(), name), checked.end()) << name << " is not checked";
    }
  }
}

TEST(Recipe, DitB2WeightsMatchTorch) {
  const auto r = diffuse_test::read_recipe(models_data_dir() / "dit_b2_recipe");
  std::size_t n = 0;
  for (const auto& p : r.params) n += diffuse::shape_numel(p.shape);
  EXPECT_EQ(n, 147'439'904u);
  EXPECT_EQ(r.manifest.at("num_parameters").get<std::size_t>(), n);
  check_recipe(models_data_dir() / "dit_b2_recipe");
}

TEST(Recipe, Sd3VaeWeightsMatchTorch) { check_recipe(models_data_dir() / "vae_sd3_recipe"); }  // forward: vae_test.cpp

TEST(Recipe, SdVaeWeightsMatchTorch) {  // its forward: tests/models/vae_test.cpp
  const auto r = diffuse_test::read_recipe(models_data_dir() / "vae_sd_recipe");
  std::size_t n = 0;
  for (const auto& p : r.params) n += diffuse::shape_numel(p.shape);
  EXPECT_EQ(n, 83'653'863u);
  EXPECT_EQ(r.manifest.at("num_parameters").get<std::size_t>(), n);
  check_recipe(models_data_dir() / "vae_sd_recipe");
}

TEST(Recipe, TaesdWeightsMatchTorch) {  // its forward: tests/models/taesd_test.cpp
  const auto r = diffuse_test::read_recipe(models_data_dir() / "taesd_recipe");
  std::size_t n = 0;
  for (const auto& p : r.params) n += diffuse::shape_numel(p.shape);
  EXPECT_EQ(n, 2'445'063u);  // the reference key list keys/taesd_diffusers.txt
  EXPECT_EQ(r.manifest.at("num_parameters").get<std::size_t>(), n);
  EXPECT_EQ(r.params.front().name, "encoder.layers.0.weight");
  EXPECT_EQ(r.params.back().name, "decoder.layers.18.bias");
  check_recipe(models_data_dir() / "taesd_recipe");
}

TEST(Recipe, Sd15UnetWeightsMatchTorch) {  // its forward: tests/models/unet2d_condition_test.cpp
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "859.5 M parameters are regenerated: skipped under a sanitizer";
#endif
  check_unet_recipe("unetc_sd15_recipe", 686, 859'520'964);  // 686: the reference key list keys/sd15_unet.txt
}

// The real SD 2.1 (768-v) and SDXL base U-Net configurations (src/models/checkpoint.cpp's copies of the published
// config.json): the published parameter counts. Their forwards: tests/models/unet2d_condition_test.cpp.
TEST(Recipe, Sd21UnetWeightsMatchTorch) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "865.9 M parameters are regenerated: skipped under a sanitizer";
#endif
  check_unet_recipe("unetc_sd21_recipe", 686, 865'910'724);  // stabilityai/stable-diffusion-2-1's unet
}

TEST(Recipe, SdxlUnetWeightsMatchTorch) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "2.57 G parameters are regenerated: skipped under a sanitizer";
#endif
  check_unet_recipe("unetc_sdxl_recipe", 1680, 2'567'463'684);  // stabilityai/stable-diffusion-xl-base-1.0's unet
}

TEST(Recipe, Crc32IsZlibs) {
  const std::string text = "123456789";
  const auto bytes = [](std::string_view t) { return std::as_bytes(std::span<const char>(t.data(), t.size())); };
  EXPECT_EQ(diffuse_test::crc32(bytes(text)), 0xCBF43926u);  // the CRC-32 check value
  EXPECT_EQ(diffuse_test::crc32(bytes("")), 0u);
  // Every length and alignment of the 8-byte step against zlib.crc32 continued byte by byte.
  std::string long_text;
  for (int i = 0; i < 300; ++i) long_text += static_cast<char>((i * 37 + 11) & 0xFF);
  for (std::size_t begin = 0; begin < 9; ++begin) {
    for (std::size_t len = 0; len + begin <= long_text.size(); len += 7) {
      const std::string_view part = std::string_view(long_text).substr(begin, len);
      std::uint32_t bytewise = 0;
      for (std::size_t i = 0; i < part.size(); ++i) bytewise = diffuse_test::crc32(bytes(part.substr(i, 1)), bytewise);
      ASSERT_EQ(diffuse_test::crc32(bytes(part)), bytewise) << begin << " " << len;
    }
  }
  // crc32_combine(crc(A), crc(B), |B|) == crc(AB), as zlib's.
  for (std::size_t cut : {0u, 1u, 5u, 8u, 150u, 299u, 300u}) {
    const std::string_view all(long_text), a = all.substr(0, cut), b = all.substr(cut);
    EXPECT_EQ(diffuse_test::crc32_combine(diffuse_test::crc32(bytes(a)), diffuse_test::crc32(bytes(b)), b.size()),
              diffuse_test::crc32(bytes(all)))
        << cut;
  }
}

TEST(Recipe, MaterializeInMemoryGivesTheSameTensors) {
  const fs::path fixture = models_data_dir() / "ddpm_cifar10_recipe";
  const diffuse_test::TempDir tmp("recipe_memory");
  diffuse_test::materialize_recipe(fixture, tmp / "disk");
  const auto mem = diffuse_test::materialize_recipe_in_memory(fixture, tmp / "memory");
#if defined(__linux__)
  EXPECT_TRUE(mem.in_memory());
#endif
  EXPECT_EQ(diffuse_test::read_json(mem.path() / "config.json"), diffuse_test::read_json(fixture / "config.json"));
  const auto disk = diffuse::io::ModelDir::open(tmp / "disk");
  const auto memory = diffuse::io::ModelDir::open(mem.path());
  ASSERT_EQ(memory.names(), disk.names());
  for (const std::string& name : disk.names()) {
    const auto& x = disk.tensor(name);
    const auto& y = memory.tensor(name);
    ASSERT_EQ(y.dtype, x.dtype) << name;
    ASSERT_EQ(y.shape, x.shape) << name;
    ASSERT_TRUE(std::equal(x.bytes().begin(), x.bytes().end(), y.bytes().begin(), y.bytes().end())) << name;
  }
}

TEST(Recipe, MaterializeWritesADiffusersFolder) {
  const fs::path fixture = models_data_dir() / "ddpm_cifar10_recipe";
  const diffuse_test::TempDir tmp("recipe");
  const fs::path out = tmp / "cifar10";  // not there yet: materialize_recipe creates it
  diffuse_test::materialize_recipe(fixture, out);
  ASSERT_TRUE(fs::exists(out / "config.json"));
  {
    const auto f = diffuse::io::SafetensorsFile::open(out / "diffusion_pytorch_model.safetensors");
    EXPECT_EQ(f.size(), 328u);
    const auto checks = diffuse_test::read_recipe(fixture).manifest.at("checks");
    const diffuse::Tensor w = f.to_f32("conv_out.bias");
    EXPECT_EQ(bits(w[0]), bits(json_float(checks.at("last_param_first"))));
    EXPECT_EQ(f.tensor("down_blocks.1.attentions.0.to_q.weight").shape, (diffuse::Shape{256, 256}));
  }
  const auto stamp_time = fs::last_write_time(out / "diffusion_pytorch_model.safetensors");
  std::ofstream(out / "config.json") << R"({"_class_name": "edited"})";
  diffuse_test::materialize_recipe(fixture, out);  // weights cached: not rewritten; config.json copied afresh
  EXPECT_EQ(fs::last_write_time(out / "diffusion_pytorch_model.safetensors"), stamp_time);
  EXPECT_EQ(diffuse_test::read_json(out / "config.json"), diffuse_test::read_json(fixture / "config.json"));
}

TEST(Recipe, ReadIoOfSmallCases) {
  const auto unet = diffuse_test::read_io(models_data_dir() / "unet2d_basic");
  EXPECT_EQ(unet.sample.shape(), (diffuse::Shape{2, 3, 16, 16}));
  EXPECT_EQ(unet.timestep.size(), 2u);
  EXPECT_TRUE(unet.class_labels.empty());
  EXPECT_EQ(unet.output.shape(), (diffuse::Shape{2, 3, 16, 16}));

  const auto dit = diffuse_test::read_io(models_data_dir() / "dit_learned_sigma");
  EXPECT_EQ(dit.class_labels, (std::vector<std::int64_t>{3, 10}));
  EXPECT_EQ(dit.output.shape(), (diffuse::Shape{2, 8, 8, 8}));
  const diffuse::Tensor eps = dit.output_channels(4);
  EXPECT_EQ(eps.shape(), (diffuse::Shape{2, 4, 8, 8}));
  EXPECT_EQ(eps[4 * 64], dit.output[8 * 64]);  // batch 1, channel 0
}

}  // namespace
