// SPDX-License-Identifier: MIT
// UNet2DModel against diffusers: the shipped digits-unet, every unet2d_* fixture of tests/data/models
// (legacy names, f16/bf16 storage, scale_shift, fourier/learned time, timestep classes, no mid block) and
// the ddpm-cifar10-32 and ddpm-256 (cat / celebahq) recipes. Parity bound everywhere: max |out - ref| <=
// parity_bound(case) * max |ref| = max(8 x torch's own f32-vs-f64 error on the case, 1e-6) (model_fixture.hpp:
// f32 compute in a different summation order). Also: thread-count and repeat determinism, no arena growth after the first
// forward, batch vs per-item, and the errors (parameters, config, forward arguments).
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "diffuse/core/error.hpp"
#include "diffuse/io/model_dir.hpp"
#include "diffuse/io/safetensors.hpp"
#include "diffuse/kernels/parallel.hpp"
#include "diffuse/models/network.hpp"
#include "diffuse/models/unet2d.hpp"
#include "models/model_fixture.hpp"
#include "temp_dir.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
using diffuse::Tensor;
using diffuse_test::expect_error;
using diffuse_test::models_data_dir;

using diffuse_test::parity_bound;  // max |out - ref| <= parity_bound(case) * max |ref| (model_fixture.hpp)
using diffuse_test::torch_f32_vs_f64;

fs::path shipped_unet() { return fs::path(DIFFUSE_SOURCE_DIR) / "models" / "digits-unet"; }

/// max |a - b| / max |b|.
double rel_error(const Tensor& a, const Tensor& b) {
  EXPECT_TRUE(a.same_shape(b)) << diffuse::shape_string(a.shape()) << " vs " << diffuse::shape_string(b.shape());
  if (!a.same_shape(b)) return INFINITY;
  double diff = 0, ref = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, static_cast<double>(std::abs(a[i] - b[i])));
    ref = std::max(ref, static_cast<double>(std::abs(b[i])));
  }
  return diff / ref;
}

bool identical(const Tensor& a, const Tensor& b) {
  return a.same_shape(b) && std::equal(a.begin(), a.end(), b.begin(), [](float x, float y) {
           return std::bit_cast<std::uint32_t>(x) == std::bit_cast<std::uint32_t>(y);
         });
}

/// A fresh scratch folder under the system temp dir (unique per process and object), removed at the end
/// of the test.
struct TempDir {
  diffuse_test::TempDir dir;
  fs::path path;
  explicit TempDir(const std::string& name) : dir("unet2d_" + name), path(dir.path()) {}
};

// ---------------------------------------------------------------------------------------------
// Parity

TEST(UNet2D, ShippedDigitsUnetMatchesDiffusers) {
  auto net = diffuse::models::load_network(shipped_unet());
  const auto& info = net->info();
  EXPECT_EQ(info.architecture, "UNet2DModel");
  EXPECT_EQ(info.in_channels, 1u);
  EXPECT_EQ(info.out_channels, 1u);
  EXPECT_EQ(info.sample_size, 16u);
  EXPECT_EQ(info.size_multiple, 4u);
  EXPECT_EQ(info.num_classes, 11u);
  ASSERT_TRUE(info.null_class.has_value());
  EXPECT_EQ(*info.null_class, 10);
  EXPECT_EQ(info.dtypes.count("F16"), 1u);
  EXPECT_GT(info.parameters, 100000u);

  const auto f = diffuse::io::SafetensorsFile::open(models_data_dir() / "digits-unet" / "forward.safetensors");
  const Tensor sample = f.to_f32("sample"), t = f.to_f32("timestep"), y = f.to_f32("class_labels");
  const Tensor ref = f.to_f32("output");
  std::vector<std::int64_t> labels;
  for (float v : y) labels.push_back(static_cast<std::int64_t>(v));
  diffuse::kernels::Context ctx(2);
  const Tensor out = net->forward(sample, t.values(), labels, ctx);
  const double err = rel_error(out, ref);
  std::printf("[parity] digits-unet: max|out-ref|/max|ref| = %.3g (torch f32 vs f64 %.3g, bound %.3g)\n", err,
              torch_f32_vs_f64("digits-unet"), parity_bound("digits-unet"));
  EXPECT_LE(err, parity_bound("digits-unet"));
}

class UNet2DFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(UNet2DFixture, MatchesDiffusers) {
  const fs::path dir = models_data_dir() / GetParam();
  auto net = diffuse::models::load_network(dir);
  const auto io = diffuse_test::read_io(dir);
  for (std::size_t threads : {1, 2}) {
    diffuse::kernels::Context ctx(threads);
    const Tensor out = net->forward(io.sample, io.timestep, io.class_labels, ctx);
    const double err = rel_error(out, io.output);
    std::printf("[parity] %s (%zu thread%s): max|out-ref|/max|ref| = %.3g (torch f32 vs f64 %.3g, bound %.3g)\n",
                GetParam().c_str(), threads, threads == 1 ? "" : "s", err, torch_f32_vs_f64(GetParam()),
                parity_bound(GetParam()));
    EXPECT_LE(err, parity_bound(GetParam())) << GetParam();
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, UNet2DFixture,
                         ::testing::Values("unet2d_basic", "unet2d_legacy_names", "unet2d_basic_f16",
                                           "unet2d_basic_bf16", "unet2d_cifar_like", "unet2d_multihead_class",
                                           "unet2d_timestep_class", "unet2d_fourier_noattn", "unet2d_learned_nomid"));

TEST(UNet2D, EveryUnetFixtureIsCovered) {
  // A new unet2d_* case must be added to the list above.
  const std::vector<std::string> known = {"unet2d_basic",           "unet2d_legacy_names",   "unet2d_basic_f16",
                                          "unet2d_basic_bf16",      "unet2d_cifar_like",     "unet2d_multihead_class",
                                          "unet2d_timestep_class",  "unet2d_fourier_noattn", "unet2d_learned_nomid"};
  for (const auto& e : fs::directory_iterator(models_data_dir())) {
    const std::string name = e.path().filename().string();
    if (name.rfind("unet2d_", 0) == 0) {
      EXPECT_NE(std::find(known.begin(), known.end(), name), known.end()) << name << " is not tested";
    }
  }
}

TEST(UNet2D, LegacyAttentionNamesGiveTheSameNetwork) {
  auto a = diffuse::models::load_network(models_data_dir() / "unet2d_basic");
  auto b = diffuse::models::load_network(models_data_dir() / "unet2d_legacy_names");
  const auto io = diffuse_test::read_io(models_data_dir() / "unet2d_basic");
  diffuse::kernels::Context ctx(1);
  const Tensor ya = a->forward(io.sample, io.timestep, io.class_labels, ctx);
  const Tensor yb = b->forward(io.sample, io.timestep, io.class_labels, ctx);
  EXPECT_TRUE(identical(ya, yb));
  EXPECT_EQ(a->info().parameters, b->info().parameters);
}

TEST(UNet2D, Cifar10RecipeMatchesDiffusers) {
  const fs::path fixture = models_data_dir() / "ddpm_cifar10_recipe";
  const TempDir tmp("ddpm_cifar10_recipe");
  const fs::path dir = diffuse_test::materialize_recipe(fixture, tmp.path);
  auto net = diffuse::models::load_network(dir);
  EXPECT_EQ(net->info().parameters, 35'746'307u);  // models.md section 2 / keys/ddpm_cifar10_unet2d.txt
  EXPECT_EQ(net->info().size_multiple, 8u);
  EXPECT_EQ(net->info().sample_size, 32u);
  EXPECT_EQ(net->info().num_classes, 0u);
  const auto io = diffuse_test::read_io(fixture);
  diffuse::kernels::Context ctx(2);
  const Tensor out = net->forward(io.sample, io.timestep, io.class_labels, ctx);
  const double err = rel_error(out, io.output);
  std::printf("[parity] ddpm_cifar10_recipe: max|out-ref|/max|ref| = %.3g (torch f32 vs f64 %.3g, bound %.3g)\n", err,
              torch_f32_vs_f64("ddpm_cifar10_recipe"), parity_bound("ddpm_cifar10_recipe"));
  EXPECT_LE(err, parity_bound("ddpm_cifar10_recipe"));
}

TEST(UNet2D, Ddpm256RecipeMatchesDiffusers) {
  // google/ddpm-cat-256 / ddpm-celebahq-256 (models.md section 2, keys/ddpm_256_unet2d.txt): six levels
  // (128,128,256,256,512,512), attention in the fifth. The fixture runs batch 1 at 64x64 (fully convolutional,
  // 64 is a multiple of 32) to keep the forward cheap. The materialised weights are ~455 MB of f32 in a
  // per-process temp folder, removed at the end of the test.
  const fs::path fixture = models_data_dir() / "ddpm_256_recipe";
  const TempDir tmp("ddpm_256_recipe");
  const fs::path dir = diffuse_test::materialize_recipe(fixture, tmp.path);
  auto net = diffuse::models::load_network(dir);
  const auto& info = net->info();
  EXPECT_EQ(info.architecture, "UNet2DModel");
  EXPECT_EQ(info.parameters, 113'673'219u);  // models.md section 2 / keys/ddpm_256_unet2d.txt (450 tensors)
  EXPECT_EQ(info.size_multiple, 32u);        // five stride-2 downsamples
  EXPECT_EQ(info.sample_size, 256u);
  EXPECT_EQ(info.in_channels, 3u);
  EXPECT_EQ(info.out_channels, 3u);
  EXPECT_EQ(info.num_classes, 0u);
  const auto io = diffuse_test::read_io(fixture);
  ASSERT_EQ(io.sample.shape(), (diffuse::Shape{1, 3, 64, 64}));
  diffuse::kernels::Context ctx(2);
  const Tensor out = net->forward(io.sample, io.timestep, io.class_labels, ctx);
  const double err = rel_error(out, io.output);
  std::printf("[parity] ddpm_256_recipe: max|out-ref|/max|ref| = %.3g (torch f32 vs f64 %.3g, bound %.3g)\n", err,
              torch_f32_vs_f64("ddpm_256_recipe"), parity_bound("ddpm_256_recipe"));
  EXPECT_LE(err, parity_bound("ddpm_256_recipe"));
}

// ---------------------------------------------------------------------------------------------
// Determinism and memory

TEST(UNet2D, ThreadsRepeatsAndArenaAreStable) {
  auto net = diffuse::models::load_network(models_data_dir() / "unet2d_multihead_class");
  const auto io = diffuse_test::read_io(models_data_dir() / "unet2d_multihead_class");
  diffuse::kernels::Context c1(1), c2(2);
  const Tensor y1 = net->forward(io.sample, io.timestep, io.class_labels, c1);
  const Tensor y2 = net->forward(io.sample, io.timestep, io.class_labels, c2);
  EXPECT_TRUE(identical(y1, y2)) << "1 and 2 threads differ";
  const std::size_t cap = c2.arena().capacity_bytes();
  const std::size_t peak = c2.arena().peak_bytes();
  const Tensor y3 = net->forward(io.sample, io.timestep, io.class_labels, c2);
  EXPECT_TRUE(identical(y2, y3)) << "a second forward differs";
  EXPECT_EQ(c2.arena().capacity_bytes(), cap) << "the arena grew on the second forward";
  EXPECT_EQ(c2.arena().peak_bytes(), peak);
  EXPECT_GT(peak, 0u);
}

TEST(UNet2D, ShippedModelThreadsBitIdentical) {
  auto net = diffuse::models::load_network(shipped_unet());
  Tensor x({2, 1, 16, 16});
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * static_cast<float>(i));
  const float t[2] = {999.0f, 3.5f};
  const std::int64_t y[2] = {3, 10};
  diffuse::kernels::Context c1(1), c2(2);
  EXPECT_TRUE(identical(net->forward(x, t, y, c1), net->forward(x, t, y, c2)));
}

TEST(UNet2D, BatchEqualsPerItem) {
  for (const char* name : {"unet2d_multihead_class", "unet2d_cifar_like", "unet2d_timestep_class"}) {
    auto net = diffuse::models::load_network(models_data_dir() / name);
    const auto io = diffuse_test::read_io(models_data_dir() / name);
    diffuse::kernels::Context ctx(2);
    const Tensor all = net->forward(io.sample, io.timestep, io.class_labels, ctx);
    const auto s = io.sample.shape();
    const std::size_t per_in = s[1] * s[2] * s[3], per_out = all.size() / s[0];
    for (std::size_t b = 0; b < s[0]; ++b) {
      Tensor xb({1, s[1], s[2], s[3]});
      std::copy(io.sample.begin() + b * per_in, io.sample.begin() + (b + 1) * per_in, xb.begin());
      std::vector<std::int64_t> lb;
      if (!io.class_labels.empty()) lb.push_back(io.class_labels[b]);
      const Tensor yb = net->forward(xb, {&io.timestep[b], 1}, lb, ctx);
      double diff = 0, ref = 0;
      for (std::size_t i = 0; i < per_out; ++i) {
        diff = std::max(diff, static_cast<double>(std::abs(yb[i] - all[b * per_out + i])));
        ref = std::max(ref, static_cast<double>(std::abs(all[b * per_out + i])));
      }
      EXPECT_LE(diff, 1e-6 * ref) << name << " item " << b;
    }
  }
}

TEST(UNet2D, BroadcastsOneTimestepAndLabel) {
  auto net = diffuse::models::load_network(shipped_unet());
  Tensor x({2, 1, 8, 8}, 0.25f);
  const float t1 = 500.0f, t2[2] = {500.0f, 500.0f};
  const std::int64_t y1 = 4, y2[2] = {4, 4};
  diffuse::kernels::Context ctx(1);
  EXPECT_TRUE(identical(net->forward(x, {&t1, 1}, {&y1, 1}, ctx), net->forward(x, t2, y2, ctx)));
}

// ---------------------------------------------------------------------------------------------
// Config

TEST(UNet2D, ConfigDefaultsAreDiffusers) {
  const auto c = diffuse::models::UNet2DConfig::from_json(nlohmann::json::object(), "test");
  EXPECT_EQ(c.in_channels, 3u);
  EXPECT_EQ(c.block_out_channels, (std::vector<std::size_t>{224, 448, 672, 896}));
  EXPECT_EQ(c.time_embed_dim(), 896u);
  EXPECT_EQ(c.attention_head_dim, std::optional<std::size_t>(8));
  EXPECT_EQ(c.norm_num_groups, std::optional<std::size_t>(32));
  EXPECT_TRUE(c.flip_sin_to_cos);
  EXPECT_EQ(c.mid_block_type, std::optional<std::string>("UNetMidBlock2D"));
  EXPECT_FALSE(c.sample_height.has_value());
  const auto d = diffuse::models::UNet2DConfig::from_json(
      nlohmann::json::parse(R"({"sample_size": [16, 24], "mid_block_type": null, "attention_head_dim": null,
                                "block_out_channels": [8, 16], "down_block_types": ["UNetResDownBlock2D", "AttnDownBlock2D"],
                                "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]})"),
      "test");
  EXPECT_EQ(d.sample_height, std::optional<std::size_t>(16));
  EXPECT_EQ(d.sample_width, std::optional<std::size_t>(24));
  EXPECT_FALSE(d.mid_block_type.has_value());
  EXPECT_FALSE(d.attention_head_dim.has_value());
}

TEST(UNet2D, ConfigErrorsNameTheField) {
  using C = diffuse::models::UNet2DConfig;
  auto parse = [](const char* text) { return C::from_json(nlohmann::json::parse(text), "test"); };
  expect_error<diffuse::format_error>(
      [&] {
        parse(R"({"block_out_channels": [8, 16], "down_block_types": ["DownBlock2D", "SkipDownBlock2D"],
                  "up_block_types": ["UpBlock2D", "UpBlock2D"]})");
      },
      {"SkipDownBlock2D", "down_block_types", "DownBlock2D, AttnDownBlock2D"});
  expect_error<diffuse::format_error>(
      [&] {
        parse(R"({"block_out_channels": [8, 16], "down_block_types": ["DownBlock2D", "DownBlock2D"],
                  "up_block_types": ["KUpBlock2D", "UpBlock2D"]})");
      },
      {"KUpBlock2D", "up_block_types", "UpBlock2D, AttnUpBlock2D"});
  expect_error<diffuse::format_error>([&] { parse(R"({"mid_block_type": "UNetMidBlock2DCrossAttn"})"); },
                                      {"mid_block_type", "UNetMidBlock2DCrossAttn"});
  expect_error<diffuse::format_error>([&] { parse(R"({"downsample_type": "resnet"})"); },
                                      {"downsample_type", "resnet"});
  expect_error<diffuse::format_error>([&] { parse(R"({"upsample_type": "resnet"})"); }, {"upsample_type", "resnet"});
  expect_error<diffuse::format_error>([&] { parse(R"({"class_embed_type": "identity"})"); },
                                      {"class_embed_type", "identity"});
  expect_error<diffuse::format_error>([&] { parse(R"({"resnet_time_scale_shift": "spatial"})"); },
                                      {"resnet_time_scale_shift", "spatial"});
  expect_error<diffuse::format_error>([&] { parse(R"({"act_fn": "mish"})"); }, {"act_fn", "mish"});
  expect_error<diffuse::format_error>([&] { parse(R"({"in_channels": "three"})"); }, {"in_channels", "three"});
  expect_error<diffuse::format_error>([&] { parse(R"({"block_out_channels": [8, 16]})"); },
                                      {"block_out_channels", "same length"});
  expect_error<diffuse::format_error>([&] { parse(R"({"time_embedding_type": "learned"})"); },
                                      {"num_train_timesteps"});
}

// Issue 10, 2.1: every size from config.json is bounded (nn/config.hpp), so no product the network
// computes from them can wrap: block_out_channels 2^62 + 8 made time_embed_dim = 4 * 2^62 + 32
// wrap to 32 and was accepted before. Each is a format_error naming the where string and the key.
TEST(UNet2D, HostileConfigSizesAreFormatErrors) {
  using C = diffuse::models::UNet2DConfig;
  auto parse = [](const nlohmann::json& j) { return C::from_json(j, "some/config.json"); };
  const nlohmann::json blocks = {{"down_block_types", {"DownBlock2D"}}, {"up_block_types", {"UpBlock2D"}}};
  struct Case {
    nlohmann::json edit;
    const char* key;
  };
  const Case cases[] = {
      {{{"block_out_channels", {(std::uint64_t{1} << 62) + 8}}}, "block_out_channels"},
      {{{"block_out_channels", {65537}}}, "block_out_channels"},
      {{{"block_out_channels", {32}}, {"time_embedding_dim", std::uint64_t{1} << 63}}, "time_embedding_dim"},
      {{{"block_out_channels", {32}}, {"in_channels", std::uint64_t{1} << 40}}, "in_channels"},
      {{{"block_out_channels", {32}}, {"out_channels", 1e15}}, "out_channels"},
      {{{"block_out_channels", {32}}, {"sample_size", std::uint64_t{1} << 60}}, "sample_size"},
      {{{"block_out_channels", {32}}, {"sample_size", {16, std::uint64_t{1} << 60}}}, "sample_size"},
      {{{"block_out_channels", {32}}, {"layers_per_block", std::uint64_t{1} << 40}}, "layers_per_block"},
      {{{"block_out_channels", {32}}, {"downsample_padding", std::uint64_t{1} << 62}}, "downsample_padding"},
      {{{"block_out_channels", {32}}, {"num_class_embeds", std::uint64_t{1} << 62}}, "num_class_embeds"},
      {{{"block_out_channels", {32}}, {"norm_num_groups", std::uint64_t{1} << 62}}, "norm_num_groups"},
      {{{"block_out_channels", {32}}, {"attention_head_dim", std::uint64_t{1} << 62}}, "attention_head_dim"},
      {{{"block_out_channels", {32}}, {"time_embedding_type", "learned"}, {"num_train_timesteps", 1e12}},
       "num_train_timesteps"},
      {{{"block_out_channels", std::vector<int>(17, 32)},
        {"down_block_types", std::vector<std::string>(17, "DownBlock2D")},
        {"up_block_types", std::vector<std::string>(17, "UpBlock2D")}},
       "down_block_types"},
  };
  for (const Case& c : cases) {
    nlohmann::json j = blocks;
    j.update(c.edit);
    SCOPED_TRACE(j.dump());
    expect_error<diffuse::format_error>([&] { parse(j); }, {"some/config.json", std::string("\"") + c.key + "\""});
  }
  // The largest accepted values pass.
  nlohmann::json ok = blocks;
  ok.update({{"block_out_channels", {65536}}, {"sample_size", 16384}, {"layers_per_block", 64}, {"norm_num_groups", 1}});
  EXPECT_NO_THROW(parse(ok));
}

// ---------------------------------------------------------------------------------------------
// Loading errors, on edited copies of the unet2d_basic fixture

/// Copies unet2d_basic into a temp dir, optionally editing its config and tensors.
fs::path edited_copy(const TempDir& tmp, const std::function<void(nlohmann::json&)>& edit_config,
                     const std::function<void(std::map<std::string, Tensor>&)>& edit_tensors) {
  const fs::path src = models_data_dir() / "unet2d_basic";
  nlohmann::json cfg = diffuse_test::read_json(src / "config.json");
  if (edit_config) edit_config(cfg);
  std::ofstream(tmp.path / "config.json") << cfg.dump(2);
  const auto f = diffuse::io::SafetensorsFile::open(src / "diffusion_pytorch_model.safetensors");
  std::map<std::string, Tensor> tensors;
  for (const auto& t : f.tensors()) tensors[t.name] = f.to_f32(t.name);
  if (edit_tensors) edit_tensors(tensors);
  diffuse::io::save_safetensors(tmp.path / "diffusion_pytorch_model.safetensors", tensors);
  return tmp.path;
}

TEST(UNet2D, MissingParameterIsNamed) {
  TempDir tmp("missing");
  const auto dir = edited_copy(tmp, {}, [](auto& t) { t.erase("up_blocks.0.resnets.1.conv2.weight"); });
  expect_error<diffuse::format_error>([&] { diffuse::models::load_network(dir); },
                                      {"missing parameter", "up_blocks.0.resnets.1.conv2.weight"});
}

TEST(UNet2D, ExtraParameterIsReported) {
  TempDir tmp("extra");
  const auto dir = edited_copy(tmp, {}, [](auto& t) { t["down_blocks.0.resnets.0.surprise.weight"] = Tensor({3}); });
  expect_error<diffuse::format_error>([&] { diffuse::models::load_network(dir); },
                                      {"down_blocks.0.resnets.0.surprise.weight", "extra"});
}

TEST(UNet2D, WrongShapeNamesParameterAndShapes) {
  TempDir tmp("shape");
  // A config that says 3 input channels while the weights have conv_in for the fixture's channels.
  const auto dir = edited_copy(tmp, {}, [](auto& t) { t["mid_block.attentions.0.to_q.bias"] = Tensor({15}); });
  expect_error<diffuse::shape_error>([&] { diffuse::models::load_network(dir); },
                                     {"mid_block.attentions.0.to_q.bias", "[15]", "expected [16]"});
}

TEST(UNet2D, ConfigDisagreeingWithWeightsNamesTheShape) {
  TempDir tmp("config");
  std::size_t in = 0;
  const auto dir = edited_copy(
      tmp,
      [&](nlohmann::json& c) {
        in = c.at("in_channels").get<std::size_t>();
        c["in_channels"] = in + 1;
      },
      {});
  expect_error<diffuse::shape_error>([&] { diffuse::models::load_network(dir); }, {"conv_in.weight", "expected"});
}

TEST(UNet2D, UnknownBlockTypeIsNamed) {
  TempDir tmp("block");
  const auto dir = edited_copy(
      tmp, [](nlohmann::json& c) { c["down_block_types"][0] = "AttnSkipDownBlock2D"; }, {});
  expect_error<diffuse::format_error>([&] { diffuse::models::load_network(dir); },
                                      {"AttnSkipDownBlock2D", "DownBlock2D, AttnDownBlock2D"});
}

// ---------------------------------------------------------------------------------------------
// Forward argument errors

TEST(UNet2D, ForwardArgumentErrors) {
  auto net = diffuse::models::load_network(shipped_unet());
  diffuse::kernels::Context ctx(1);
  const float t = 10.0f;
  const std::int64_t y = 3;
  const std::int64_t bad_y = 11;
  const float t3[3] = {1, 2, 3};
  const std::int64_t y3[3] = {1, 2, 3};
  expect_error<diffuse::shape_error>([&] { net->forward(Tensor({1, 16, 16}), {&t, 1}, {&y, 1}, ctx); }, {"x:"});
  expect_error<diffuse::shape_error>([&] { net->forward(Tensor({1, 3, 16, 16}), {&t, 1}, {&y, 1}, ctx); },
                                     {"x:", "channels"});
  expect_error<diffuse::shape_error>([&] { net->forward(Tensor({1, 1, 18, 16}), {&t, 1}, {&y, 1}, ctx); },
                                     {"x:", "multiples of 4"});
  expect_error<diffuse::shape_error>([&] { net->forward(Tensor({2, 1, 16, 16}), t3, {&y, 1}, ctx); },
                                     {"timesteps", "3"});
  expect_error<diffuse::shape_error>([&] { net->forward(Tensor({2, 1, 16, 16}), {&t, 1}, y3, ctx); },
                                     {"labels", "3"});
  expect_error<diffuse::value_error>([&] { net->forward(Tensor({1, 1, 16, 16}), {&t, 1}, {&bad_y, 1}, ctx); },
                                     {"labels", "11", "out of range"});
  expect_error<diffuse::value_error>([&] { net->forward(Tensor({1, 1, 16, 16}), {&t, 1}, {}, ctx); },
                                     {"labels", "required"});
  auto uncond = diffuse::models::load_network(models_data_dir() / "unet2d_basic");
  expect_error<diffuse::value_error>([&] { uncond->forward(Tensor({1, 3, 16, 16}), {&t, 1}, {&y, 1}, ctx); },
                                     {"labels", "unconditional"});
  auto learned = diffuse::models::load_network(models_data_dir() / "unet2d_learned_nomid");
  const float frac = 2.5f;
  expect_error<diffuse::value_error>(
      [&] {
        const auto& i = learned->info();
        learned->forward(Tensor({1, i.in_channels, 16, 16}), {&frac, 1}, {}, ctx);
      },
      {"timesteps", "learned"});
}

}  // namespace
